"""VQ-MAE-AV: the audiovisual masked autoencoder (:class:`VQMAEAV`), its encoder, decoder and SAF / CAF fusion.

**Blocks** ([Sadok-thesis] Sec. 5.2.5; keys: docs/REFERENCES.md). Pre-LN ViT blocks
(timm ``Block``): width 320, 4 heads, MLP ratio 2, exact GELU, LayerNorm eps 1e-5
(PyTorch's). SAF: the two visible sequences are concatenated and go through one stack
(then a final LayerNorm in the encoder). CAF: per modality, one cross-attention block
with query = own tokens and key = value = the visible tokens of both modalities, then a
separate L-block stack per modality (each with its own final LayerNorm in the encoder).
The cross-attention block is the authors' ``out = q + LN(MLP(MHA(q, kv, kv)))`` (one
LayerNorm, no residual around the attention): it is the block of [code-vqmae-av] and
the one the parameter counts of [Sadok-thesis] contain. The decoder replaces the encoder
outputs in their original places among one shared learned mask token, adds its own
position and modality embeddings, runs L' blocks with the same fusion options and no
final LayerNorm ([Sadok-thesis] Sec. 5.2.5). The decoder CAF of [code-vqmae-av] applies
the *visual* cross-attention to the audio stream too (a bug; its audio cross-attention block
exists but is never used); here each modality uses its own (same parameter count).
``caf_form="authors"`` reproduces theirs (to match their numbers and run their checkpoints:
``avrep.convert.vqmae``); the decoder then has no audio cross-attention parameters.

**Attention biases.** ``attention_bias`` (default True, as avrep's earlier checkpoints): query / key /
value biases in the self-attention blocks. The authors' timm blocks have none
(``Block(qkv_bias=False)``; 15,360 parameters in SAF-SAF 12 / 4), so the ``:paper`` configs set it
False; their cross-attention blocks (PyTorch ``nn.MultiheadAttention``) and the poolings keep theirs.

**Global tokens** ([Sadok-thesis] Sec. 5.2.5, Eqs. 5.1–5.2). Attention pooling with a
learned query (N(0, 1) init, as the code): ``a = q + MHA(q, z, z); w = a + LN(MLP(a))``,
one per modality, over the encoder outputs of the visible tokens.
``global_tokens=False`` drops them (the thesis's "without contrastive learning" models,
whose sizes [Sadok-thesis] Tables 5.4 and C.1 give).

**Logits only at masked positions** ([Sadok-thesis] Sec. 5.2.5–5.2.6). The decoder
output of each masked token is gathered first; then it is split into its indices (320 =
40 × 8 or 80 × 4) and each chunk goes through the per-index Linear(e → k).
``all_logits=True`` computes the logits of every token instead (for reconstructions);
the loss is the same (tested). :func:`vqmae_loss`: cross-entropy averaged over the
masked indices of the batch, per modality, the two terms summed ([Sadok-thesis] Sec.
5.2.6; a modality with nothing masked adds 0, as the code), plus the InfoNCE between the
global tokens (NT-Xent: cosine similarity, τ = 0.5, the 2B - 2 other items of the batch
as negatives, both directions, [code-vqmae-av]; the thesis gives no τ).

**Sizes.** With the defaults and ``global_tokens=False``: SAF-SAF 13,507,520,
CAF-SAF 25,024,960, SAF-CAF 18,442,560, CAF-CAF 29,960,000 parameters ([Sadok-thesis]
Table 5.4: 13.5 / 25.0 / 18.4 / 30.0 M); with ``attention_bias=False`` SAF-SAF 13,492,160 and
CAF-CAF 29,929,280, the authors' classes' counts exactly (tests/test_vqmae_parity.py). SAF-SAF
(with biases) with 6 / 16 / 20 encoder blocks: 8,571,200 / 16,798,400 / 20,089,280
([Sadok-thesis] Table C.1: 8.5 / 16.8 / 20.2 M). All are within 0.1 M of the thesis except
depth 20 (-0.111 M). Each block adds 822,720, so
6 -> 20 blocks adds 11.52 M where [Sadok-thesis] Table C.1 says 11.7 M; to put all four
depths within 0.1 M the model would need 11-29 k more depth-independent parameters than
the structure of [Sadok-thesis] and [code-vqmae-av] has (or ~640 more per block: e.g.
timm's LayerScale, which the authors' ``Block(320, 4, mlp_ratio=2.0)`` does not enable).
Neither is in the thesis or the code, so neither is added: [Sadok-thesis] Table C.1 is
taken to be slightly off (its 8.5 is also 0.07 M below the structure's 8.57).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from avrep.models.config import check_choice
from avrep.models.vqmae.masking import (
    MASK_RNG,
    Masking,
    _check_masking_fields,
    _gather,
    _mask_modality,
    _pack_visible,
    _packed_ranges,
    _pair_rows,
    _pairs,
    _prediction,
    _ratio_override,
    _unshuffle,
    packed_saf_slots,
    paired_slots,
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
from avrep.nn.attention import AttentionPooling, CrossAttentionBlock, Stack

FUSIONS = ("saf", "caf")
MASKINGS = ("dirichlet", "fixed")
CAF_FORMS = ("corrected", "authors")  # the decoder's CAF: each modality its own cross-attention, or [code-vqmae-av]'s


def _concat_valid(a, v, valid_a, valid_v):
    if valid_a is None and valid_v is None:
        return None
    ones = lambda x: jnp.ones(x.shape[:2], bool)  # noqa: E731
    return jnp.concatenate([ones(a) if valid_a is None else valid_a, ones(v) if valid_v is None else valid_v], axis=1)


class Fusion(nn.Module):
    """SAF or CAF over an audio and a visual token sequence ([Sadok-thesis] Sec. 5.2.5).

    "saf": one shared Stack over concat(audio, visual). "caf": per modality a
    CrossAttentionBlock (query = own tokens, key = value = both modalities' tokens),
    then a per-modality Stack. ``caf_form="authors"``: the audio stream goes through the
    *visual* cross-attention block ([code-vqmae-av]'s decoder; see the module doc).
    """

    kind: str
    depth: int
    num_heads: int
    mlp_ratio: float
    final_norm: bool
    qkv_bias: bool = True
    caf_form: str = "corrected"

    def __post_init__(self):
        check_choice(self, "kind", FUSIONS)
        check_choice(self, "caf_form", CAF_FORMS)
        super().__post_init__()

    @nn.compact
    def __call__(self, a, v, valid_a=None, valid_v=None, segment=None):
        """``v=None`` (SAF only): ``a`` is already the joint sequence (a packed buffer, whose
        ``segment`` [B, K] says which example each slot holds if it holds two)."""
        if v is None:
            if self.kind != "saf":
                raise ValueError("Fusion: a single packed sequence needs kind='saf'")
            return self._stack("stack")(a, valid_a, segment)
        n_a = a.shape[1]
        both = jnp.concatenate([a, v], axis=1)
        both_valid = _concat_valid(a, v, valid_a, valid_v)
        if self.kind == "saf":
            x = self._stack("stack")(both, both_valid)
            return x[:, :n_a], x[:, n_a:]
        visual_cross = CrossAttentionBlock(self.num_heads, self.mlp_ratio, name="visual_cross")
        if self.caf_form == "authors":
            audio_cross = visual_cross
        else:
            audio_cross = CrossAttentionBlock(self.num_heads, self.mlp_ratio, name="audio_cross")
        a = self._stack("audio_stack")(audio_cross(a, both, both_valid), valid_a)
        v = self._stack("visual_stack")(visual_cross(v, both, both_valid), valid_v)
        return a, v

    def _stack(self, name):
        return Stack(self.depth, self.num_heads, self.mlp_ratio, self.final_norm, self.qkv_bias, name=name)


class _AVStack(nn.Module):
    """The fields the VQ-MAE-AV encoder and decoder share."""

    grids: tuple[_Grid, _Grid]
    width: int
    depth: int
    fusion: str
    num_heads: int
    mlp_ratio: float
    position_init: str
    qkv_bias: bool
    caf_form: str


class _AVEncoder(_AVStack):
    @nn.compact
    def __call__(
        self,
        tokens: Mapping[str, jax.Array],
        maskings: Mapping[str, Masking] | None,
        packed: int | None = None,
        paired: int | None = None,
    ):
        """-> (z, valid, offsets): per modality its encoder outputs [B, K, D], which slots hold
        its visible tokens [B, K] (None: all) and where its slots start ([B] or 0).

        ``packed`` (SAF, coupled ratios): one joint buffer of that many slots, the visible audio
        tokens then the visible visual tokens then padding; both modalities share it.
        ``paired`` (with ``packed``, paired ratios): examples 2k and 2k + 1 share one buffer
        row of that many slots, attending only within their own example; each example's
        z is that row (its slots start at ``offsets``).
        """
        xs, valid = {}, {}
        for g in self.grids:
            x = TokenEmbedding(g.num_codes, g.code_dim, self.width, name=f"{g.name}_embedding")(tokens[g.name])
            pos = _position_param(self, f"{g.name}_pos", g, self.width, self.position_init)
            modality = self.param(f"{g.name}_modality", _pos_init, (self.width,))
            x = x + pos[: x.shape[1]] + modality
            if maskings is not None and packed is None:
                x = _gather(x, maskings[g.name].keep)
            xs[g.name] = x
            valid[g.name] = None if maskings is None else maskings[g.name].valid
        fusion = Fusion(
            self.fusion, self.depth, self.num_heads, self.mlp_ratio, True, self.qkv_bias, self.caf_form, name="fusion"
        )
        if packed is not None:
            x = jnp.concatenate([xs["audio"], xs["visual"]], axis=1)
            ids = _pack_visible(maskings["audio"], maskings["visual"], packed)
            n_a, n_v = maskings["audio"].num_visible, maskings["visual"].num_visible
            if paired is None:
                start = jnp.zeros_like(n_a)
                z = fusion(_gather(x, ids), None, jnp.arange(packed) < (n_a + n_v)[:, None])
            else:
                ids, segment, start = _pair_rows(ids, jnp.zeros_like(n_a), n_a + n_v, x.shape[1], paired)
                z = jnp.repeat(fusion(_gather(_pairs(x), ids), None, segment >= 0, segment=segment), 2, axis=0)
            valid, offsets = _packed_ranges(ids.shape[1], start, n_a, n_v)
            return {"audio": z, "visual": z}, valid, offsets
        z_a, z_v = fusion(xs["audio"], xs["visual"], valid["audio"], valid["visual"])
        return {"audio": z_a, "visual": z_v}, valid, {"audio": 0, "visual": 0}


class _AVDecoder(_AVStack):
    @nn.compact
    def __call__(
        self,
        z,
        valid,
        offsets,
        maskings: Mapping[str, Masking],
        tokens,
        all_logits: bool,
        pair_slots: Mapping[str, int] | None = None,
    ):
        mask_token = self.param("mask_token", _pos_init, (self.width,))
        xs = {}
        for g in self.grids:
            x = _unshuffle(z[g.name], valid[g.name], maskings[g.name], mask_token, offsets[g.name])
            pos = _position_param(self, f"{g.name}_pos", g, self.width, self.position_init)
            modality = self.param(f"{g.name}_modality", _pos_init, (self.width,))
            xs[g.name] = x + pos[: x.shape[1]] + modality
        ys = Fusion(
            self.fusion, self.depth, self.num_heads, self.mlp_ratio, False, self.qkv_bias, self.caf_form, name="fusion"
        )(xs["audio"], xs["visual"])
        out = {}
        for g, y in zip(self.grids, ys):
            head = _index_head(g, self.width, f"{g.name}_")
            out[g.name] = _prediction(
                head,
                y,
                tokens[g.name],
                maskings[g.name],
                all_logits,
                None if pair_slots is None else pair_slots[g.name],
            )
        return out


class VQMAEAV(nn.Module):
    """VQ-MAE-AV (see module doc). Defaults: the thesis's final model (CAF-CAF, Dirichlet).

    ``__call__(audio, visual)`` (pre-training forward; needs the ``"mask"`` RNG) returns
    {"audio" | "visual": {"logits" [B, M, n, k], "targets" [B, M, n], "target_mask"
    [B, M], "masked" [B, N], "mask_fraction" [B]}, "global": {"audio" | "visual":
    [B, width]} (if ``global_tokens``)}; feed it to :func:`vqmae_loss`. With paired ratios
    the logits, targets and target mask come per pair of examples: [B/2, M', ...]. ``encode``
    gives every token's encoder output, unmasked, for fine-tuning.
    """

    # Index grids ([Sadok-thesis] Sec. 5.2.2; clip length [code-vqmae-av]: 2 s).
    audio_frames: int = 100
    audio_bins: int = 64
    visual_frames: int = 50
    visual_height: int = 24
    visual_width: int = 24
    audio_patch_time: int = 10
    audio_patch_freq: int = 4
    visual_patch_time: int = 5
    visual_patch_size: int = 4
    audio_codes: int = 256
    audio_code_dim: int = 8
    visual_codes: int = 512
    visual_code_dim: int = 4
    # Transformer ([Sadok-thesis] Sec. 5.2.5).
    width: int = 320
    num_heads: int = 4
    mlp_ratio: float = 2.0
    encoder_depth: int = 12
    decoder_depth: int = 4
    encoder_fusion: str = "caf"
    decoder_fusion: str = "caf"
    global_tokens: bool = True  # attention-pooled w_a, w_v (needed for the contrastive loss)
    position_init: str = "normal"  # learned positions from N(0, 0.02²) as the code, or "sincos"
    attention_bias: bool = True  # q / k / v biases in the self-attention blocks (the authors': none)
    caf_form: str = "corrected"  # or "authors": the decoder's audio stream through the visual cross-attention
    # Masking ([Sadok-thesis] Sec. 5.2.3–5.2.4).
    masking: str = "dirichlet"  # or "fixed" (mask_ratio for both modalities)
    mask_ratio: float = 0.8
    dirichlet_alpha: tuple[float, float] = (1.0, 1.0)
    mask_unit: str = "patch"  # or "frame"
    ratio_per_example: bool = True  # False: one Dirichlet draw per batch, as the code
    paired_ratios: bool = False  # True: example 2k + 1 gets example 2k's draw swapped (see module doc)
    min_visible: int = 1  # masking units always left visible per modality

    def __post_init__(self):
        check_choice(self, "encoder_fusion", FUSIONS)
        check_choice(self, "decoder_fusion", FUSIONS)
        check_choice(self, "masking", MASKINGS)
        check_choice(self, "position_init", POSITION_INITS)
        check_choice(self, "caf_form", CAF_FORMS)
        _check_masking_fields(self)
        if len(self.dirichlet_alpha) != 2 or min(self.dirichlet_alpha) <= 0:
            raise ValueError(
                f"VQMAEAV.dirichlet_alpha={self.dirichlet_alpha}: expected two positive concentrations (audio, visual)"
            )
        if self.paired_ratios and not (
            self.masking == "dirichlet"
            and self.ratio_per_example
            and self.dirichlet_alpha[0] == self.dirichlet_alpha[1]
        ):
            raise ValueError(
                f"VQMAEAV.paired_ratios needs masking='dirichlet' (got {self.masking!r}), "
                f"ratio_per_example=True (got {self.ratio_per_example}) and equal "
                f"dirichlet_alpha (got {self.dirichlet_alpha}): the swapped draw must have "
                f"the same distribution"
            )
        for g, prefix in zip(self._grids(), ("audio", "visual")):
            g.check(self.width, prefix)
        super().__post_init__()

    def _grids(self) -> tuple[_Grid, _Grid]:
        return _audio_grid(self), _visual_grid(self)

    def setup(self):
        grids = self._grids()
        common = dict(
            grids=grids,
            width=self.width,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            position_init=self.position_init,
            qkv_bias=self.attention_bias,
        )
        # The authors' encoder CAF is the corrected one: only their decoder shares its visual block.
        self.encoder = _AVEncoder(depth=self.encoder_depth, fusion=self.encoder_fusion, caf_form="corrected", **common)
        self.decoder = _AVDecoder(
            depth=self.decoder_depth, fusion=self.decoder_fusion, caf_form=self.caf_form, **common
        )
        if self.global_tokens:
            self.audio_pool = AttentionPooling(self.num_heads, self.mlp_ratio)
            self.visual_pool = AttentionPooling(self.num_heads, self.mlp_ratio)

    def tokenize(self, audio, visual):
        """Checked index grids -> {"audio": [B, N_a, 40], "visual": [B, N_v, 80]}."""
        g_a, g_v = self._grids()
        tokens = {"audio": g_a.tokenize(audio), "visual": g_v.tokenize(visual)}
        if audio.shape[0] != visual.shape[0]:
            raise ValueError(f"VQMAEAV: audio batch {audio.shape[0]} != visual batch {visual.shape[0]}")
        w_a, w_v = audio.shape[1] // g_a.patch_time, visual.shape[1] // g_v.patch_time
        if w_a != w_v:
            raise ValueError(
                f"VQMAEAV: audio has {w_a} token windows ({audio.shape[1]} frames / "
                f"audio_patch_time={g_a.patch_time}) but visual has {w_v} ({visual.shape[1]} "
                f"frames / visual_patch_time={g_v.patch_time}); the clips must cover the "
                f"same duration"
            )
        return tokens

    def _pool(self, z, valid):
        return {
            "audio": self.audio_pool(z["audio"], valid["audio"]),
            "visual": self.visual_pool(z["visual"], valid["visual"]),
        }

    def sample_masking(self, tokens, mask_ratio=None):
        """Maskings of both modalities (``"mask"`` RNG) -> ({name: Masking}, ratios [B, 2])."""
        batch = tokens["audio"].shape[0]
        k_ratio, k_a, k_v = jax.random.split(self.make_rng(MASK_RNG), 3)
        exact = mask_ratio is None and self.masking == "fixed"
        if mask_ratio is not None:
            ratio = _ratio_override(mask_ratio, batch, "VQMAEAV", 2)
        elif self.masking == "dirichlet":
            alpha = jnp.asarray(self.dirichlet_alpha, jnp.float32)
            if self.paired_ratios:
                if batch % 2:
                    raise ValueError(f"VQMAEAV.paired_ratios: the batch ({batch}) must be even")
                ratio = jax.random.dirichlet(k_ratio, alpha, (batch // 2,))
                ratio = jnp.stack([ratio, ratio[:, ::-1]], axis=1).reshape(batch, 2)
            else:
                shape = (batch,) if self.ratio_per_example else ()
                ratio = jnp.broadcast_to(jax.random.dirichlet(k_ratio, alpha, shape), (batch, 2))
        else:
            ratio = jnp.full((batch, 2), self.mask_ratio, jnp.float32)
        maskings = {
            g.name: _mask_modality(self, k, ratio[:, i], g, tokens[g.name].shape[1], batch, exact)
            for i, (g, k) in enumerate(zip(self._grids(), (k_a, k_v)))
        }
        return maskings, ratio

    def __call__(
        self,
        audio,
        visual,
        *,
        mask_ratio=None,
        all_logits: bool = False,
        maskings: Mapping[str, Masking] | None = None,
    ):
        """Masked pre-training forward pass.

        audio [B, T_a, audio_bins], visual [B, T_v, visual_height, visual_width]: VQ
        indices. mask_ratio: None (the configured masking), or masked fractions
        overriding it: a scalar, (p_a, p_v) or [B, 2] (may be traced). all_logits:
        logits of every token instead of the masked ones only. maskings: {"audio" |
        "visual": Masking} to use instead of sampling (e.g. ``masking_from_order`` of a
        stored shuffle; then no ``"mask"`` RNG is needed).
        """
        tokens = self.tokenize(audio, visual)
        given = maskings is not None
        if not given:
            maskings, _ = self.sample_masking(tokens, mask_ratio)
        # Coupled ratios (not a call-time override, which may not sum to 1, nor given maskings): SAF
        # packs both modalities' visible tokens into one buffer of a static bound (packed_saf_slots),
        # and paired ratios put two examples in each row (paired_slots).
        num_tokens = {k: t.shape[1] for k, t in tokens.items()}
        coupled = mask_ratio is None and not given
        packed = packed_saf_slots(self, num_tokens) if coupled else None
        pairs = paired_slots(self, num_tokens) if coupled else None
        z, valid, offsets = self.encoder(tokens, maskings, packed, pairs and pairs.get("encoder"))
        out = self.decoder(z, valid, offsets, maskings, tokens, all_logits, None if all_logits else pairs)
        for name, m in maskings.items():
            n = m.order.shape[1]
            out[name].update(masked=m.masked, mask_fraction=1.0 - m.num_visible / n)
        if self.global_tokens:
            out["global"] = self._pool(z, valid)
        return out

    def encode(self, audio, visual, *, pool: bool = True):
        """Unmasked encoder: {"tokens": {"audio": [B, N_a, D], "visual": [B, N_v, D]},
        "global": {...} (if ``global_tokens`` and ``pool``)}."""
        z, valid, _ = self.encoder(self.tokenize(audio, visual), None)
        out = {"tokens": z}
        if self.global_tokens and pool:
            out["global"] = self._pool(z, valid)
        return out
