"""VQ-MAE-S and VQ-MAE-V (:class:`VQMAES`, :class:`VQMAEV`): one modality's VQ-MAE with a [CLS] token.

**VQ-MAE-S** ([Sadok-thesis] App. C.3; [VQ-MAE-S]): the audio branch alone, with a [CLS] token prepended after
masking (no position embedding in the encoder, decoder position 0), fixed ratio,
"frame" (best in [Sadok-thesis] Table C.3) or "patch" masking, a 200-frame clip (320 tokens), MLP
ratio 4 (the code's timm default; the thesis gives no size). The mask ratio default
0.8 is my choice (the code ships 50-90 % checkpoints; the thesis gives none).

**Loss mask.** avrep scores every masked token (``loss_mask="all_masked"``, the default). [code-vqmae-s]
scores one fewer per example: its decoder counts the [CLS] row among the visible tokens, so the masked
token first in shuffle order (never seen by the encoder) is left out, 159 of 160 at 320 tokens and ratio
0.5. ``loss_mask="authors"`` reproduces that (for comparing with their numbers; tested against their
model). Their "vertical" (frame) masking also keeps int(N(1 - r)) - 1 tokens, a second off-by-one in the
masking itself, which is not reproduced. ``attention_bias`` as :class:`avrep.models.vqmae.VQMAEAV`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from avrep.models.config import check_choice
from avrep.models.vqmae.masking import (
    MASK_RNG,
    Masking,
    _check_masking_fields,
    _gather,
    _mask_modality,
    _prediction,
    _unshuffle,
    authors_unscored,
)
from avrep.models.vqmae.tokens import (
    POSITION_INITS,
    TokenEmbedding,
    _audio_grid,
    _Grid,
    _index_head,
    _pos_init,
    _position_param,
    _visual_grid,
)
from avrep.nn.attention import Stack

LOSS_MASKS = ("all_masked", "authors")


class _SStack(nn.Module):
    """The fields a unimodal encoder and decoder share (as _AVStack for VQ-MAE-AV)."""

    grid: _Grid
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    position_init: str
    qkv_bias: bool


class _SEncoder(_SStack):
    @nn.compact
    def __call__(self, tokens, masking: Masking | None):
        g = self.grid
        x = TokenEmbedding(g.num_codes, g.code_dim, self.width, name="embedding")(tokens)
        pos = _position_param(self, "pos", g, self.width, self.position_init)
        x = x + pos[: x.shape[1]]
        valid = None
        if masking is not None:
            x, valid = _gather(x, masking.keep), masking.valid
        cls = self.param("cls", _pos_init, (self.width,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        if valid is not None:
            valid = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), valid], axis=1)
        z = Stack(self.depth, self.num_heads, self.mlp_ratio, True, self.qkv_bias, name="stack")(x, valid)
        return z[:, 0], z[:, 1:], None if valid is None else valid[:, 1:]


class _SDecoder(_SStack):
    @nn.compact
    def __call__(self, cls, z, valid, masking: Masking, tokens, all_logits: bool):
        g = self.grid
        mask_token = self.param("mask_token", _pos_init, (self.width,))
        pos = _position_param(self, "pos", g, self.width, self.position_init, cls_row=True)  # [CLS] at 0
        x = jnp.concatenate([cls[:, None], _unshuffle(z, valid, masking, mask_token)], axis=1)
        x = x + pos[: x.shape[1]]
        y = Stack(self.depth, self.num_heads, self.mlp_ratio, False, self.qkv_bias, name="stack")(x)[:, 1:]
        head = _index_head(g, self.width, "")
        return _prediction(head, y, tokens, masking, all_logits)


class _UnimodalMAE(nn.Module):
    """One modality's VQ-MAE with a [CLS] token: VQ-MAE-S (audio) and VQ-MAE-V (visual).

    ``__call__(indices)`` returns {modality: {...as VQMAEAV...}, "cls": [B, width]};
    ``encode(indices)`` returns {"tokens": {modality: [B, N, D]}, "cls": [B, D]}.
    """

    width: int = 320
    num_heads: int = 4
    mlp_ratio: float = 2.0
    encoder_depth: int = 12
    decoder_depth: int = 4
    mask_unit: str = "frame"
    mask_ratio: float = 0.8
    min_visible: int = 1
    position_init: str = "normal"  # as VQMAEAV.position_init
    attention_bias: bool = True  # as VQMAEAV.attention_bias
    loss_mask: str = "all_masked"  # or "authors": [code-vqmae-s]'s off-by-one (module doc)

    def __post_init__(self):
        check_choice(self, "position_init", POSITION_INITS)
        check_choice(self, "loss_mask", LOSS_MASKS)
        _check_masking_fields(self)
        g = self._grid()
        g.check(self.width, g.name)
        super().__post_init__()

    def _grid(self) -> _Grid:
        raise NotImplementedError

    def setup(self):
        common = dict(
            grid=self._grid(),
            width=self.width,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            position_init=self.position_init,
            qkv_bias=self.attention_bias,
        )
        self.encoder = _SEncoder(depth=self.encoder_depth, **common)
        self.decoder = _SDecoder(depth=self.decoder_depth, **common)

    def __call__(self, indices, *, mask_ratio=None, all_logits: bool = False, masking: Masking | None = None):
        """Masked forward pass; ``mask_ratio`` (scalar or [B], may be traced) overrides
        the fixed ratio, ``all_logits`` and ``masking`` (given instead of sampled) as in :class:`VQMAEAV`."""
        grid = self._grid()
        tokens = grid.tokenize(indices)
        batch = tokens.shape[0]
        if masking is None:
            exact = mask_ratio is None
            if exact:
                ratio = self.mask_ratio
            else:
                ratio = jnp.asarray(mask_ratio, jnp.float32)
                if ratio.shape not in ((), (batch,)):
                    raise ValueError(
                        f"{type(self).__name__}: mask_ratio has shape {ratio.shape}; expected a scalar or [{batch}]"
                    )
            masking = _mask_modality(self, self.make_rng(MASK_RNG), ratio, grid, tokens.shape[1], batch, exact)
        cls, z, valid = self.encoder(tokens, masking)
        out = self.decoder(cls, z, valid, masking, tokens, all_logits)
        if self.loss_mask == "authors":
            out["target_mask"] = out["target_mask"] & ~authors_unscored(masking, all_logits)
        out.update(masked=masking.masked, mask_fraction=1.0 - masking.num_visible / tokens.shape[1])
        return {grid.name: out, "cls": cls}

    def encode(self, indices):
        grid = self._grid()
        cls, z, _ = self.encoder(grid.tokenize(indices), None)
        return {"tokens": {grid.name: z}, "cls": cls}


class VQMAES(_UnimodalMAE):
    """VQ-MAE-S: the audio-only VQ-MAE with a [CLS] token ([Sadok-thesis] App. C.3; see module doc)."""

    audio_frames: int = 200
    audio_bins: int = 64
    audio_patch_time: int = 10
    audio_patch_freq: int = 4
    audio_codes: int = 256
    audio_code_dim: int = 8
    mlp_ratio: float = 4.0  # [code-vqmae-s] timm default; the thesis gives no size for VQ-MAE-S
    mask_unit: str = "frame"  # best in [Sadok-thesis] Table C.3; or "patch" (Patch-tf)

    def _grid(self) -> _Grid:
        return _audio_grid(self)


class VQMAEV(_UnimodalMAE):
    """VQ-MAE-V: the video-only counterpart of VQ-MAE-AV (the unimodal baseline of [Sadok-thesis] Fig. C.1), with
    VQ-MAE-S's structure on face index grids (our construction: the thesis gives no details)."""

    visual_frames: int = 50
    visual_height: int = 24
    visual_width: int = 24
    visual_patch_time: int = 5
    visual_patch_size: int = 4
    visual_codes: int = 512
    visual_code_dim: int = 4
    mask_unit: str = "patch"

    def _grid(self) -> _Grid:
        return _visual_grid(self)
