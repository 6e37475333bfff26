"""VQ-MAE-AV and VQ-MAE-S: masked autoencoders on VQ-VAE index grids, and their SER heads.

Spec: spec/vqmae.md §1.4 (token grid), §2 (masking, embedding), §3 (blocks, SAF / CAF
fusion, global tokens, decoder), §4 (losses), §5 (fine-tuning heads, asymmetric loss),
§8 (VQ-MAE-S), §10 (discrepancies). "[code]" marks choices taken from the authors'
PyTorch code where the thesis is silent (spec header).

**Tokens** (spec §1.4). The frozen VQ-VAEs give index grids: audio ``[B, T_a, D']``
(D' = 64 indices per spectrogram frame, 256 codes) and visual ``[B, T_v, H', W']``
(24 × 24 per face frame, 512 codes). A token is a block of indices: audio t_a × d =
10 × 4 = 40 indices, visual t_v × h × w = 5 × 4 × 4 = 80 indices. Tokens are ordered
time-group major (then frequency, or row then column); inside a token the indices are
ordered (frequency / row, column, time), the authors' einops layout, so that their
checkpoints' position embeddings line up. Each index is replaced by a row of a
trainable table (256 × 8 audio, 512 × 4 visual) and the rows of one token are
concatenated: 40 · 8 = 80 · 4 = 320 = the transformer width, with no extra patch
projection, and the decoder's output token is split back into its indices' 8 or 4 values,
from which one linear layer gives each index's logits. Where indices × code dim ≠ width
(our CPU configs: 8 values per index at width 160, since width / 80 = 2 values cannot tell
512 codes apart), a linear projection maps the concatenation to the width and the decoder
output back (``*_embedding/projection``, ``*_head_projection``). Learned position
embeddings (one row per token of the longest clip, ``*_frames``; initialised N(0, 0.02²)
as the code, or, ``position_init="sincos"``, with MAE's sin-cos table of each token's
(time, frequency) or (time, row, column) group) and a learned modality embedding are
added. A shorter clip (a whole number of token windows)
uses the first rows of the position embeddings: with the time-major order these are
exactly its tokens. A 2 s clip (100 audio, 50 visual frames) gives 160 + 360 tokens.

**Masking with static shapes** (spec §2). Whole tokens are masked, uniformly at random
("patch") or whole time groups of tokens at once ("frame": all frequency bands of a
10-frame audio window, all 36 spatial tokens of a 5-frame visual window). The masking
ratio is fixed or, for VQ-MAE-AV, coupled: (p_a, p_v) ~ Dir(1, 1), so p_a + p_v = 1.
The number of visible tokens is round(N(1 - p)) (the code's rule), which depends on
the drawn ratio; jit needs static shapes, so :func:`sample_masking` sorts the tokens by
noise (MAE's shuffle) and hands the encoder a buffer of a *static* number of slots
(``max_visible``): the first ``num_visible`` slots hold the visible tokens, the others
are padding, marked invalid and excluded as attention keys (so they never influence
a valid token; valid outputs equal those of an encoder run on the visible tokens
alone, which the tests check). With a fixed ratio the buffer is exactly the visible
set (no padding, MAE's full saving); with Dirichlet ratios it holds every token of
the modality. SAF with Dirichlet ratios does better: with p_a + p_v = 1 the visible
total N_a(1 - p_a) + N_v p_a varies (160 to 360 tokens of a 2 s clip) but never
exceeds max(N_a, N_v) plus rounding, so the visible tokens of both modalities are
packed into one joint buffer of that static bound (:func:`packed_saf_slots`: 361
slots instead of 520; the encoder step is ~1.4x cheaper, and the result is the same
as the padded buffers, tested). CAF streams are per modality, and a call-time
``mask_ratio`` need not sum to 1, so both keep the per-modality buffers. The same
trick bounds the masked tokens: the loss gathers a static ``N - min_visible`` slots
from the masked end of the shuffle. Different ratio draws therefore never change a
shape (compiled once, the whole training step included; tested).

**Paired ratios** (``paired_ratios``, our option, on in the configs): example 2k + 1 gets
example 2k's draw swapped, (p_v, p_a). Each example's ratios are still Dir(1, 1) (α
symmetric), so the expected loss is that of independent draws; but a pair's visible
tokens then add up to about N_a + N_v and its masked tokens of a modality to about N,
whatever the draw (:func:`paired_slots`). The SAF encoder therefore runs one row per
pair (attention kept within each example by a segment mask): 522 slots for two 2 s
clips instead of 2 · 361, and the masked tokens' logits are gathered per pair: 161 / 361
slots instead of 2 · 159 / 2 · 359. Same loss, global tokens and gradients as the padded
buffers for the same masks (tested).

Dirichlet ratios are drawn per example by default (``ratio_per_example``; the code
draws once per batch, which ``False`` reproduces; the thesis does not say). A
modality keeps at least ``min_visible`` masking units (default 1) so that its global
token is always defined; this only changes draws with p > 1 - 1/(2N). The masking
noise and the Dirichlet draw come from the ``"mask"`` RNG stream
(``apply(..., rngs={"mask": key})``); ``mask_ratio=`` at call time overrides them
(e.g. the 0-90 % reconstruction sweep of Fig. C.1) without recompiling.

**Blocks** (spec §3.1-3.2). Pre-LN ViT blocks (timm ``Block``): width 320, 4 heads,
MLP ratio 2, exact GELU, LayerNorm eps 1e-5 (PyTorch's). SAF: the two visible
sequences are concatenated and go through one stack (then a final LayerNorm in the
encoder). CAF: per modality, one cross-attention block with query = own tokens and
key = value = the visible tokens of both modalities, then a separate L-block stack
per modality (each with its own final LayerNorm in the encoder). The cross-attention
block is the authors' ``out = q + LN(MLP(MHA(q, kv, kv)))`` (one LayerNorm, no
residual around the attention): it is what the spec describes and what the thesis
parameter counts contain. The decoder replaces the encoder outputs in their
original places among one shared learned mask token, adds its own position and
modality embeddings, runs L' blocks with the same fusion options and no final
LayerNorm (§3.4). The code's decoder CAF applies the *visual* cross-attention to the
audio stream too (§3.2, a bug); here each modality uses its own (same parameter
count).

**Global tokens** (§3.3). Attention pooling with a learned query (N(0, 1) init, as
the code): ``a = q + MHA(q, z, z); w = a + LN(MLP(a))``, one per modality, over the
encoder outputs of the visible tokens. ``global_tokens=False`` drops them (the
thesis's "without contrastive learning" models, whose sizes Tables 5.4 and C.1
give).

**Logits only at masked positions** (§3.4, §4). The decoder output of each masked
token is gathered first; then it is split into its indices (320 = 40 × 8 or 80 × 4)
and each chunk goes through the per-index Linear(e → k). ``all_logits=True`` computes
the logits of every token instead (for reconstructions); the loss is the same
(tested). :func:`vqmae_loss`: cross-entropy averaged over the masked indices of the
batch, per modality, the two terms summed (§4; a modality with nothing masked adds
0, as the code), plus the InfoNCE between the global tokens (NT-Xent: cosine
similarity, τ = 0.5, the 2B - 2 other items of the batch as negatives, both
directions, [code]; the thesis gives no τ).

**VQ-MAE-S** (§8): the audio branch alone, with a [CLS] token prepended after
masking (no position embedding in the encoder, decoder position 0), fixed ratio,
"frame" (best in Table C.3) or "patch" masking, a 200-frame clip (320 tokens), MLP
ratio 4 (the code's timm default; the thesis gives no size). The mask ratio default
0.8 is my choice (the code ships 50-90 % checkpoints; the thesis gives none).

**Fine-tuning** (§5). :class:`VQMAEClassifier` wraps a pre-trained model's encoder
(``backbone.encode``: no masking, no decoder) with a head: "mean" (per-modality mean
of the tokens, concatenated, Linear), "attention" (the global tokens, reused when the
backbone has them, else new poolings), "query2emo" (:class:`Query2Emo`: learned
per-class queries attend over all tokens; PyTorch ``nn.Transformer`` layers, post-norm,
8 heads, FFN 2048, [code]; 1 encoder and 1 decoder layer as the thesis says, the code
has 2 decoder layers), or "cls" (VQ-MAE-S's [CLS] token). Its parameters sit under
``backbone`` with the pre-trained model's names, so a pre-trained ``params`` tree
(minus ``decoder``) drops in. :func:`asymmetric_loss` is the code's ``ASLSingleLabel``
(γ+ = 0, γ- = 4, label smoothing 0.1). No dropout anywhere (timm's and the
pre-training defaults are 0; nn.Transformer's 0.1 in Query2Emo is left out).

**Sizes.** With the defaults and ``global_tokens=False``: SAF-SAF 13,507,520,
CAF-SAF 25,024,960, SAF-CAF 18,442,560, CAF-CAF 29,960,000 parameters (thesis Table
5.4: 13.5 / 25.0 / 18.4 / 30.0 M); SAF-SAF with 6 / 16 / 20 encoder blocks:
8,571,200 / 16,798,400 / 20,089,280 (Table C.1: 8.5 / 16.8 / 20.2 M). All are within
0.1 M of the thesis except depth 20 (-0.111 M). Each block adds 822,720, so 6 -> 20
blocks adds 11.52 M where Table C.1 says 11.7 M; to put all four depths within 0.1 M
the model would need 11-29 k more depth-independent parameters than the spec's
structure has (or ~640 more per block: e.g. timm's LayerScale, which the authors'
``Block(320, 4, mlp_ratio=2.0)`` does not enable). Neither is in the spec, so
neither is added: Table C.1 is taken to be slightly off (its 8.5 is also 0.07 M
below the structure's 8.57).

**Inputs.** Index grids must be integers with the configured frequency / spatial
sizes, a whole number (≥ 1) of token windows in time, at most ``*_frames`` frames,
and the same number of token windows in both modalities (same duration); a
ValueError names the argument and field. Index values cannot be checked under jit:
call :func:`check_indices` on the host (the models call it themselves when their
inputs are concrete, i.e. outside jit). Under jit an out-of-range index (negative
ones included) embeds as NaN, so the loss turns NaN instead of silently wrapping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from avrep.models.config import check_choice

FUSIONS = ("saf", "caf")
MASKINGS = ("dirichlet", "fixed")
MASK_UNITS = ("patch", "frame")
POSITION_INITS = ("normal", "sincos")
POOLINGS = ("mean", "attention", "query2emo", "cls")
MASK_RNG = "mask"
MODALITIES = ("audio", "visual")

_LN_EPS = 1e-5  # PyTorch's LayerNorm default (timm Block, nn.Transformer)
_dense_init = nn.initializers.xavier_uniform()  # MAE / timm ViT Linear init
_pos_init = nn.initializers.truncated_normal(stddev=0.02)


def sincos_positions(coordinates: np.ndarray, width: int) -> np.ndarray:
    """[N, axes] integer token coordinates -> [N, width] sin-cos table (MAE's, one block per axis).

    The width is split evenly over the axes (an even number of values each; the few left over
    stay 0); each axis gets sines then cosines at frequencies 1 / 10000^(i / half).
    """
    coordinates = np.asarray(coordinates, np.float64)
    per_axis = 2 * (width // (2 * coordinates.shape[1]))
    half = per_axis // 2
    freqs = 1.0 / 10000 ** (np.arange(half) / max(half, 1))
    table = np.zeros((len(coordinates), width), np.float32)
    for axis in range(coordinates.shape[1]):
        angles = coordinates[:, axis:axis + 1] * freqs
        table[:, axis * per_axis:(axis + 1) * per_axis] = np.concatenate([np.sin(angles), np.cos(angles)], 1)
    return table


def _position_param(module: nn.Module, name: str, grid: _Grid, width: int, init: str, *, cls_row: bool = False):
    """Learned position embeddings [max_tokens (+1 for a leading [CLS] row), width], initialised as
    the code does (truncated normal, std 0.02) or with the tokens' sin-cos table ("sincos")."""
    rows = grid.max_tokens + int(cls_row)
    if init == "normal":
        return module.param(name, _pos_init, (rows, width))
    table = sincos_positions(grid.coordinates(), width)
    if cls_row:
        table = np.concatenate([np.zeros((1, width), np.float32), table])
    return module.param(name, lambda key, shape, dtype=jnp.float32: jnp.asarray(table, dtype), (rows, width))


# ------------------------------------------------------------ tokenisation ---


def _check_windows(where: str, frames: int, window: int, field: str) -> None:
    if frames < window:
        raise ValueError(f"{where}: a clip of {frames} frames is too short for one token window "
                         f"({field}={window} frames)")
    if frames % window:
        raise ValueError(f"{where}: {frames} frames is not a whole number of token windows "
                         f"({field}={window}); crop or pad the clip to a multiple of {window}")


def _check_divisible(where: str, size: int, what: str, patch: int, field: str) -> None:
    if size % patch:
        raise ValueError(f"{where}: {what} {size} is not a multiple of {field}={patch}")


def tokenize_audio(indices, patch_time: int = 10, patch_freq: int = 4):
    """Audio index grid [B, T, D'] -> tokens [B, (T/t)(D'/d), d·t].

    Token n = (time group, frequency group), time-group major; inside a token the
    indices run (frequency, time): the code's ``'b (t1 t2) (c1 l1) -> b (t1 c1) (l1 t2)'``.
    """
    if jnp.ndim(indices) != 3:
        raise ValueError(f"tokenize_audio: indices have shape {jnp.shape(indices)}; expected [batch, "
                         f"frames, bins]")
    b, t, f = indices.shape
    _check_windows("tokenize_audio", t, patch_time, "patch_time")
    _check_divisible("tokenize_audio", f, "bins", patch_freq, "patch_freq")
    x = indices.reshape(b, t // patch_time, patch_time, f // patch_freq, patch_freq)
    x = x.transpose(0, 1, 3, 4, 2)
    return x.reshape(b, (t // patch_time) * (f // patch_freq), patch_freq * patch_time)


def untokenize_audio(tokens, bins: int, patch_time: int = 10, patch_freq: int = 4):
    """Inverse of :func:`tokenize_audio`: [B, N, d·t, *rest] -> [B, T, D', *rest]
    (``rest``: e.g. the codebook axis of logits)."""
    b, n = tokens.shape[:2]
    rest = tokens.shape[3:]
    groups = bins // patch_freq
    n_t = n // groups
    x = tokens.reshape(b, n_t, groups, patch_freq, patch_time, *rest)
    perm = (0, 1, 4, 2, 3) + tuple(range(5, 5 + len(rest)))
    return x.transpose(perm).reshape(b, n_t * patch_time, bins, *rest)


def tokenize_visual(indices, patch_time: int = 5, patch_size: int = 4):
    """Visual index grid [B, T, H', W'] -> tokens [B, (T/t)(H'/h)(W'/w), h·w·t].

    Token n = (time group, row group, column group); inside a token the indices run
    (row, column, time): the code's ``'b (t1 t2) (c1 l1 c2 l2) -> b (t1 c1 c2) (l1 l2 t2)'``.
    """
    if jnp.ndim(indices) != 4:
        raise ValueError(f"tokenize_visual: indices have shape {jnp.shape(indices)}; expected "
                         f"[batch, frames, height, width]")
    b, t, h, w = indices.shape
    p = patch_size
    _check_windows("tokenize_visual", t, patch_time, "patch_time")
    _check_divisible("tokenize_visual", h, "height", p, "patch_size")
    _check_divisible("tokenize_visual", w, "width", p, "patch_size")
    x = indices.reshape(b, t // patch_time, patch_time, h // p, p, w // p, p)
    x = x.transpose(0, 1, 3, 5, 4, 6, 2)
    return x.reshape(b, (t // patch_time) * (h // p) * (w // p), p * p * patch_time)


def untokenize_visual(tokens, height: int, width: int, patch_time: int = 5, patch_size: int = 4):
    """Inverse of :func:`tokenize_visual`: [B, N, h·w·t, *rest] -> [B, T, H', W', *rest]."""
    b, n = tokens.shape[:2]
    rest = tokens.shape[3:]
    p = patch_size
    rows, cols = height // p, width // p
    n_t = n // (rows * cols)
    x = tokens.reshape(b, n_t, rows, cols, p, p, patch_time, *rest)
    perm = (0, 1, 6, 2, 4, 3, 5) + tuple(range(7, 7 + len(rest)))
    return x.transpose(perm).reshape(b, n_t * patch_time, height, width, *rest)


def check_indices(indices, num_codes: int, where: str) -> None:
    """Host-side check that VQ indices are integers in [0, num_codes).

    jit cannot raise on values, so call this where the data is still concrete (data
    loading, before the jitted step); the models call it themselves when run outside
    jit. Raises TypeError for a traced or non-integer array, ValueError naming
    ``where`` and the first offending position otherwise.
    """
    if isinstance(indices, jax.core.Tracer):
        raise TypeError(f"{where}: check_indices needs concrete values; call it on the host, outside "
                        f"jit (a jitted function cannot raise on values)")
    a = np.asarray(indices)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{where}: VQ indices must be integers, got dtype {a.dtype}")
    if a.size == 0:
        return
    bad = (a < 0) | (a >= num_codes)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: VQ indices must lie in [0, {num_codes}) (the codebook size); found "
                         f"values in [{a.min()}, {a.max()}], e.g. {a[pos]} at position {pos}")


@dataclasses.dataclass(frozen=True)
class _Grid:
    """One modality's index grid and token layout (static; built from a model's fields)."""

    name: str  # "audio" or "visual"
    owner: str  # model class name, for errors
    max_frames: int
    spatial: tuple[int, ...]  # (bins,) or (height, width)
    patch_time: int
    patch_space: int  # d, or h = w
    num_codes: int
    code_dim: int
    frames_field: str

    @property
    def indices_per_token(self) -> int:
        return self.patch_time * self.patch_space ** len(self.spatial)

    @property
    def tokens_per_window(self) -> int:
        return math.prod(s // self.patch_space for s in self.spatial)

    @property
    def max_tokens(self) -> int:
        return self.max_frames // self.patch_time * self.tokens_per_window

    def coordinates(self) -> np.ndarray:
        """[max_tokens, 1 + spatial axes]: each token's (time group, frequency group) or (time group,
        row group, column group), in token order (see :func:`tokenize_audio`, :func:`tokenize_visual`)."""
        sizes = (self.max_frames // self.patch_time, *(s // self.patch_space for s in self.spatial))
        return np.stack(np.meshgrid(*map(np.arange, sizes), indexing="ij"), -1).reshape(-1, len(sizes))

    def check(self, width: int, prefix: str) -> None:
        """ValueErrors naming the fields of a layout that cannot work."""
        where = self.owner
        for size, what in zip(self.spatial, ("height", "width") if len(self.spatial) == 2 else ("bins",)):
            _check_divisible(where, size, f"{prefix}_{what}", self.patch_space,
                             f"{prefix}_patch_{'freq' if self.name == 'audio' else 'size'}")
        if self.max_frames < self.patch_time or self.max_frames % self.patch_time:
            raise ValueError(f"{where}.{self.frames_field}={self.max_frames} must be a positive multiple of "
                             f"{prefix}_patch_time={self.patch_time}")
        if self.code_dim < 1:
            raise ValueError(f"{where}.{prefix}_code_dim={self.code_dim} must be positive")

    def tokenize(self, x):
        """Checks an index grid against the layout; returns its tokens [B, N, indices_per_token]."""
        where = self.owner
        shape = tuple(jnp.shape(x))
        expected = (len(self.spatial) + 2, *self.spatial)
        if len(shape) != expected[0] or shape[2:] != self.spatial:
            dims = ", ".join(str(s) for s in self.spatial)
            raise ValueError(f"{where}: {self.name} indices have shape {shape}; expected [batch, frames, "
                             f"{dims}]")
        if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
            raise TypeError(f"{where}: {self.name} indices must be integers, got {jnp.result_type(x)}")
        frames = shape[1]
        _check_windows(f"{where} ({self.name})", frames, self.patch_time, "patch_time")
        if frames > self.max_frames:
            raise ValueError(f"{where}: {self.name} clip has {frames} frames, more than "
                             f"{self.frames_field}={self.max_frames} (the position embeddings' length)")
        if isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer):
            check_indices(x, self.num_codes, f"{where} {self.name}")
        if len(self.spatial) == 1:
            return tokenize_audio(x, self.patch_time, self.patch_space)
        return tokenize_visual(x, self.patch_time, self.patch_space)


def _audio_grid(model) -> _Grid:
    """The audio grid of a model with the ``audio_*`` fields (VQMAEAV, VQMAES)."""
    return _Grid("audio", type(model).__name__, model.audio_frames, (model.audio_bins,), model.audio_patch_time,
                 model.audio_patch_freq, model.audio_codes, model.audio_code_dim, "audio_frames")


def _visual_grid(model) -> _Grid:
    """The visual grid of a model with the ``visual_*`` fields (VQMAEAV, VQMAEV)."""
    return _Grid("visual", type(model).__name__, model.visual_frames, (model.visual_height, model.visual_width),
                 model.visual_patch_time, model.visual_patch_size, model.visual_codes, model.visual_code_dim,
                 "visual_frames")


# ----------------------------------------------------------------- masking ---


class Masking(NamedTuple):
    """One modality's masking, with static shapes (N tokens, K encoder slots, M target slots).

    order [B, N]: token ids shuffled, visible ones first. restore [B, N]: position of
    each token in ``order``. num_visible [B]: visible tokens. keep [B, K] = order[:, :K]:
    tokens fed to the encoder; valid [B, K]: slot holds a visible token (the rest is
    padding). masked [B, N]: token is masked. masked_ids [B, M] = order[:, N-M:]: tokens
    whose logits are computed; masked_valid [B, M]: that token is really masked.
    """

    order: jax.Array
    restore: jax.Array
    num_visible: jax.Array
    keep: jax.Array
    valid: jax.Array
    masked: jax.Array
    masked_ids: jax.Array
    masked_valid: jax.Array


def num_visible_units(ratio, num_units: int, min_units: int = 0, max_units: int | None = None):
    """round(num_units · (1 - ratio)) clipped to [min_units, max_units] (the code's rule).

    Host-side (NumPy, float64) for Python floats, traced otherwise.
    """
    max_units = num_units if max_units is None else max_units
    if isinstance(ratio, (int, float)):
        return int(np.clip(np.round(num_units * (1.0 - ratio)), min_units, max_units))
    n = jnp.round(num_units * (1.0 - jnp.asarray(ratio, jnp.float32)))
    return jnp.clip(n, min_units, max_units).astype(jnp.int32)


def sample_masking(key, ratio, *, batch: int, num_units: int, unit_size: int = 1,
                   min_visible_units: int = 0, max_visible_units: int | None = None) -> Masking:
    """Random masking of ``num_units`` units of ``unit_size`` consecutive tokens each.

    ``unit_size=1`` is token ("patch") masking; whole time windows ("frame") are units
    of ``tokens_per_window`` tokens (the token order is time-window major). ``ratio``:
    the masked fraction, a scalar or [batch], traced or not. The visible count
    round(num_units(1 - ratio)) is clipped to [min_visible_units, max_visible_units];
    these two *static* bounds fix every shape: K = max_visible_units · unit_size
    encoder slots and M = N - min_visible_units · unit_size target slots. Equal bounds
    give an exact, padding-free buffer (a fixed ratio known in advance).
    """
    max_visible_units = num_units if max_visible_units is None else max_visible_units
    if not 0 <= min_visible_units <= max_visible_units <= num_units:
        raise ValueError(f"sample_masking: need 0 <= min_visible_units ({min_visible_units}) <= "
                         f"max_visible_units ({max_visible_units}) <= num_units ({num_units})")
    n_tokens = num_units * unit_size
    ratio = jnp.broadcast_to(jnp.asarray(ratio, jnp.float32), (batch,))
    n_vis = num_visible_units(ratio, num_units, min_visible_units, max_visible_units) * unit_size
    unit_order = jnp.argsort(jax.random.uniform(key, (batch, num_units)), axis=1)
    order = (unit_order[:, :, None] * unit_size + jnp.arange(unit_size)).reshape(batch, n_tokens)
    order = order.astype(jnp.int32)
    restore = jnp.argsort(order, axis=1).astype(jnp.int32)
    k = max_visible_units * unit_size
    m = n_tokens - min_visible_units * unit_size
    slots = jnp.arange(n_tokens)
    return Masking(order=order, restore=restore, num_visible=n_vis, keep=order[:, :k],
                   valid=slots[:k] < n_vis[:, None], masked=restore >= n_vis[:, None],
                   masked_ids=order[:, n_tokens - m:],
                   masked_valid=slots[n_tokens - m:] >= n_vis[:, None])


def _gather(x, ids):
    """x [B, N, ...] at ids [B, K] -> [B, K, ...]."""
    ids = ids.reshape(ids.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, ids, axis=1)


def _unshuffle(z, valid, masking: Masking, mask_token, offset=0):
    """Encoder slots back in token order, the mask token everywhere else: [B, N, D].

    Token t of the modality sits in encoder slot ``offset + restore[t]`` when visible
    (``offset`` [B]: where the modality starts in a packed SAF buffer, 0 otherwise);
    every masked token reads one mask-token row appended after the slots. ``valid``
    is implied by ``masking`` (kept for the callers' symmetry).
    """
    del valid
    b, k, d = z.shape
    slot = jnp.where(masking.masked, k, masking.restore + jnp.reshape(offset, (-1, 1)))
    z = jnp.concatenate([z, jnp.broadcast_to(mask_token.astype(z.dtype), (b, 1, d))], axis=1)
    return _gather(z, slot)


# ------------------------------------------------------------------ blocks ---


def _layer_norm(name=None):
    return nn.LayerNorm(epsilon=_LN_EPS, name=name)


def _attention(num_heads: int, name=None):
    return Attention(num_heads=num_heads, name=name)


class _DenseParams(nn.Module):
    """The kernel and bias of an ``nn.DenseGeneral`` (same names, shapes and initial values:
    the kernel is drawn flattened to 2-D, as DenseGeneral does, then reshaped), for
    :class:`Attention` to apply itself."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @nn.compact
    def __call__(self):
        def kernel_init(key, shape, dtype=jnp.float32):
            return _dense_init(key, (math.prod(self.in_shape), math.prod(self.out_shape)), dtype).reshape(shape)

        kernel = self.param("kernel", kernel_init, self.in_shape + self.out_shape)
        return kernel, self.param("bias", nn.initializers.zeros_init(), self.out_shape)


class Attention(nn.Module):
    """``nn.MultiHeadDotProductAttention(num_heads, kernel_init=_dense_init)`` with the same
    parameters (query / key / value / out, kernel + bias: checkpoints and parameter
    counts unchanged) and the same function (float32 rounding apart, tested), computed
    faster on CPU: a layer's forward + backward at the VQ-MAE-AV shapes takes 0.65x
    (decoder, [16, 520, 320]) and 0.74x (packed encoder, [16, 361, 320], key mask) the
    time of flax's module, whose attention matmuls and softmax passes over
    [B, H, N_q, N_k] arrays (70 MB at 520 tokens) are bound by memory traffic:

    * one matmul for the Q, K, V projections of self-attention (K, V for cross-attention);
    * the heads' softmax(QKᵀ/√d)V in a loop over (example, head) pairs
      (:func:`_attention_core`), so that each [N_q, N_k] score matrix (1 MB for 520
      tokens) stays in cache through the exp, the sum and the value product; the
      backward recomputes the probabilities per pair (flash-attention style) instead
      of storing and re-reading them.

    XLA's cost analysis counts the loop's body once, so benchmarks count FLOPs on the
    batched form (:func:`batched_attention`); the work itself is the same.

    Called like flax's module: inputs_q [B, N_q, C], inputs_k [B, N_k, C_kv] (default:
    inputs_q), inputs_v (default: inputs_k), mask broadcastable to [B, H, N_q, N_k]
    (True: attend) or None -> [B, N_q, C]. Like flax, masked scores are set to the
    float minimum before the softmax. No dropout, no decoding cache; differentiable in
    reverse mode only (custom VJP).
    """

    num_heads: int

    @nn.compact
    def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None):
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        b, n_q, c = inputs_q.shape
        n_k, c_kv = inputs_k.shape[1:]
        h = self.num_heads
        if c % h:
            raise ValueError(f"Attention: width {c} is not divisible by num_heads={h}")
        d = c // h
        query, key, value = (_DenseParams((cin,), (h, d), name=n)()
                             for n, cin in (("query", c), ("key", c_kv), ("value", c_kv)))
        out_kernel, out_bias = _DenseParams((h, d), (c,), name="out")()
        if inputs_k is inputs_q and inputs_v is inputs_q:  # self-attention: Q, K, V in one matmul
            q, k, v = _project_heads(inputs_q, (query, key, value))
        elif inputs_v is inputs_k:  # cross-attention: K, V in one matmul
            (q,) = _project_heads(inputs_q, (query,))
            k, v = _project_heads(inputs_k, (key, value))
        else:
            (q,), (k,), (v,) = (_project_heads(x, (p,)) for x, p in
                                ((inputs_q, query), (inputs_k, key), (inputs_v, value)))
        q = q / jnp.sqrt(d).astype(q.dtype)  # flax's scaling
        if mask is not None:  # -> [B·H, N_q or 1, N_k], the layout of q, k, v
            mask = jnp.broadcast_to(mask, (b, h) + mask.shape[-2:]).reshape((b * h,) + mask.shape[-2:])
        o = _attention_core(q, k, v, mask)  # [B·H, N_q, d]
        o = o.reshape(b, h, n_q, d).transpose(0, 2, 1, 3).reshape(b * n_q, h * d)
        return (o @ out_kernel.reshape(h * d, c) + out_bias).reshape(b, n_q, c)


def _project_heads(x, params):
    """x [B, N, C] through the (kernel [C, H, d], bias [H, d]) pairs as one matmul ->
    one [B·H, N, d] array per pair."""
    b, n, c = x.shape
    h, d = params[0][1].shape
    kernel = jnp.concatenate([k.reshape(c, h * d) for k, _ in params], axis=1)
    bias = jnp.concatenate([bias.reshape(h * d) for _, bias in params])
    y = (x.reshape(b * n, c) @ kernel + bias).reshape(b, n, len(params), h, d)
    return tuple(y.transpose(2, 0, 3, 1, 4).reshape(len(params), b * h, n, d))


def _masked_scores(q, k, mask):
    s = jnp.einsum("...qd,...kd->...qk", q, k)
    return s if mask is None else jnp.where(mask, s, jnp.finfo(s.dtype).min)


def _attention_core(q, k, v, mask):
    """softmax(q kᵀ, masked) v per leading index: q [G, N_q, d], k, v [G, N_k, d], mask
    [G, N_q or 1, N_k] bool or None -> [G, N_q, d] (see :class:`Attention`).

    The loop is for CPU caches; on an accelerator it would serialise small matmuls, so
    there the batched form (flax's computation) is used. :func:`batched_attention` forces
    the batched form while tracing (benchmarks count FLOPs with it: XLA's cost analysis
    counts a loop's body once).
    """
    if jax.default_backend() == "cpu" and not _FORCE_BATCHED_ATTENTION:
        return _attention_core_looped(q, k, v, mask)
    return _attention_core_batched(q, k, v, mask)


_FORCE_BATCHED_ATTENTION = False


@contextlib.contextmanager
def batched_attention():
    """Within this block, models traced use the batched attention form on every backend. jit reuses
    a function's earlier trace, so jit a new function object here (e.g. ``lambda *a: step(*a)``)."""
    global _FORCE_BATCHED_ATTENTION
    previous, _FORCE_BATCHED_ATTENTION = _FORCE_BATCHED_ATTENTION, True
    try:
        yield
    finally:
        _FORCE_BATCHED_ATTENTION = previous


def _attention_core_batched(q, k, v, mask):
    return jnp.einsum("gqk,gkd->gqd", jax.nn.softmax(_masked_scores(q, k, mask)), v)


@jax.custom_vjp
def _attention_core_looped(q, k, v, mask):
    return _attention_core_fwd(q, k, v, mask)[0]


def _attention_core_fwd(q, k, v, mask):
    def one(args):
        q, k, v, mask = args
        s = _masked_scores(q, k, mask)
        m = s.max(-1, keepdims=True)
        e = jnp.exp(s - m)
        total = e.sum(-1, keepdims=True)
        return (e @ v) / total, (m, total)  # normalising after the value product: [N_q, d], not [N_q, N_k]

    o, (m, total) = jax.lax.map(one, (q, k, v, mask))
    return o, (q, k, v, mask, o, m, total)


def _attention_core_bwd(res, do):
    q, k, v, mask, o, m, total = res
    delta = jnp.sum(do * o, -1, keepdims=True)  # Σ_k p·dp = Σ_d do·o (the softmax gradient's row term)

    def one(args):
        q, k, v, mask, do, m, total, delta = args
        p = jnp.exp(_masked_scores(q, k, mask) - m) / total  # the forward's probabilities, recomputed
        ds = p * (do @ v.T - delta)
        if mask is not None:  # flax's where() passes no gradient to masked scores (matters for all-masked rows)
            ds = jnp.where(mask, ds, 0.0)
        return ds @ k, ds.T @ q, p.T @ do

    dq, dk, dv = jax.lax.map(one, (q, k, v, mask, do, m, total, delta))
    return dq, dk, dv, None


_attention_core_looped.defvjp(_attention_core_fwd, _attention_core_bwd)


def _attention_mask(valid, segment=None):
    """[B, K] key validity -> [B, 1, 1, K] attention mask (None: all keys). ``segment`` [B, K]
    (paired rows, :func:`_pair_rows`): which example of the row a slot holds, -1 for padding;
    a slot then attends only to its own example's slots -> [B, 1, K, K]."""
    if segment is not None:
        return (segment[:, None, :, None] == segment[:, None, None, :]) & (segment >= 0)[:, None, None, :]
    return None if valid is None else valid[:, None, None, :]


class MLP(nn.Module):
    """Linear(hidden) -> exact GELU -> Linear(width): timm's ``Mlp``."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        h = _gelu(nn.Dense(self.hidden, kernel_init=_dense_init, name="fc1")(x))
        return nn.Dense(x.shape[-1], kernel_init=_dense_init, name="fc2")(h)


def _gelu(x):
    """Exact GELU, x·Φ(x) = x/2·(1 + erf(x/√2)): PyTorch's formula (timm's ``nn.GELU``).

    ``nn.gelu(approximate=False)`` evaluates the same function through erfc, which XLA's CPU
    backend computes with an exp and two branches; this form is cheaper in the
    training step (~30 % less for the activation and its gradient, ~1 % of the VQ-MAE-S
    step) and agrees to float32 rounding (tested).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / math.sqrt(2.0))).astype(x.dtype))


class Block(nn.Module):
    """Pre-LN transformer block (timm ``Block``): x + MHSA(LN(x)), then x + MLP(LN(x)).

    ``valid`` [B, N] excludes padding slots as keys (their own outputs are ignored
    downstream); ``segment`` (see :func:`_attention_mask`) keeps two packed examples apart.
    """

    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, x, valid=None, segment=None):
        h = _layer_norm("norm1")(x)
        x = x + _attention(self.num_heads, "attn")(h, h, mask=_attention_mask(valid, segment))
        return x + MLP(int(self.mlp_ratio * x.shape[-1]), name="mlp")(_layer_norm("norm2")(x))


class CrossAttentionBlock(nn.Module):
    """The authors' cross-attention block: a = MHA(q, kv, kv); out = q + LN(MLP(a)).

    ``residual_attention=True`` is their pooling variant: a = q + MHA(q, kv, kv);
    out = a + LN(MLP(a)). One LayerNorm either way (spec §3.2).
    """

    num_heads: int
    mlp_ratio: float
    residual_attention: bool = False

    @nn.compact
    def __call__(self, q, kv, kv_valid=None):
        a = _attention(self.num_heads, "attn")(q, kv, kv, mask=_attention_mask(kv_valid))
        if self.residual_attention:
            a = a + q
        base = a if self.residual_attention else q
        return base + _layer_norm("norm")(MLP(int(self.mlp_ratio * q.shape[-1]), name="mlp")(a))


class Stack(nn.Module):
    """``depth`` Blocks, then a LayerNorm if ``final_norm``."""

    depth: int
    num_heads: int
    mlp_ratio: float
    final_norm: bool

    @nn.compact
    def __call__(self, x, valid=None, segment=None):
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, name=f"block_{i}")(x, valid, segment)
        return _layer_norm("norm")(x) if self.final_norm else x


def _concat_valid(a, v, valid_a, valid_v):
    if valid_a is None and valid_v is None:
        return None
    ones = lambda x: jnp.ones(x.shape[:2], bool)  # noqa: E731
    return jnp.concatenate([ones(a) if valid_a is None else valid_a,
                            ones(v) if valid_v is None else valid_v], axis=1)


class Fusion(nn.Module):
    """SAF or CAF over an audio and a visual token sequence (spec §3.2).

    "saf": one shared Stack over concat(audio, visual). "caf": per modality a
    CrossAttentionBlock (query = own tokens, key = value = both modalities' tokens),
    then a per-modality Stack.
    """

    kind: str
    depth: int
    num_heads: int
    mlp_ratio: float
    final_norm: bool

    def __post_init__(self):
        check_choice(self, "kind", FUSIONS)
        super().__post_init__()

    @nn.compact
    def __call__(self, a, v, valid_a=None, valid_v=None, segment=None):
        """``v=None`` (SAF only): ``a`` is already the joint sequence (a packed buffer, whose
        ``segment`` [B, K] says which example each slot holds if it holds two)."""
        if v is None:
            if self.kind != "saf":
                raise ValueError("Fusion: a single packed sequence needs kind='saf'")
            return Stack(self.depth, self.num_heads, self.mlp_ratio, self.final_norm, name="stack")(a, valid_a,
                                                                                                   segment)
        n_a = a.shape[1]
        both = jnp.concatenate([a, v], axis=1)
        both_valid = _concat_valid(a, v, valid_a, valid_v)
        stack = lambda name: Stack(self.depth, self.num_heads, self.mlp_ratio, self.final_norm,  # noqa: E731
                                   name=name)
        if self.kind == "saf":
            x = stack("stack")(both, both_valid)
            return x[:, :n_a], x[:, n_a:]
        cross = lambda name: CrossAttentionBlock(self.num_heads, self.mlp_ratio, name=name)  # noqa: E731
        a = stack("audio_stack")(cross("audio_cross")(a, both, both_valid), valid_a)
        v = stack("visual_stack")(cross("visual_cross")(v, both, both_valid), valid_v)
        return a, v


class AttentionPooling(nn.Module):
    """Global token w = CrossAttentionBlock(residual)(learned query, z) (spec §3.3, CaiT).

    z [B, N, D], valid [B, N] or None -> [B, D].
    """

    num_heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, z, valid=None):
        query = self.param("query", nn.initializers.normal(1.0), (1, z.shape[-1]))
        q = jnp.broadcast_to(query, (z.shape[0], 1, z.shape[-1]))
        return CrossAttentionBlock(self.num_heads, self.mlp_ratio, residual_attention=True,
                                   name="block")(q, z, valid)[:, 0]


class TokenEmbedding(nn.Module):
    """Index tokens [B, N, n] -> [B, N, width]: one trainable row per index, concatenated.

    In the thesis's layout n·code_dim equals the width and the concatenation is the token. When it
    does not (the CPU configs: width 160 with 8-value index embeddings, where width / n would leave
    2 values per visual index), a linear ``projection`` maps the n·code_dim values to the width.
    Out-of-range indices (negative ones included) give NaN rows rather than wrapping
    or clamping, so a bad index shows up in the loss even under jit.
    """

    num_codes: int
    code_dim: int
    width: int

    @nn.compact
    def __call__(self, tokens):
        table = self.param("embedding", nn.initializers.normal(1.0), (self.num_codes, self.code_dim))
        tokens = jnp.where(tokens < 0, self.num_codes, tokens)
        x = jnp.take(table, tokens, axis=0, mode="fill", fill_value=jnp.nan)
        x = x.reshape(*tokens.shape[:-1], tokens.shape[-1] * self.code_dim)
        if x.shape[-1] != self.width:
            x = nn.Dense(self.width, kernel_init=_dense_init, name="projection")(x)
        return x


def _index_head(grid: _Grid, width: int, prefix: str):
    """Decoder tokens [B, M, width] -> logits [B, M, n, num_codes]: each token is split into its n indices'
    code_dim values (after a linear projection to n·code_dim when that differs from the width, as in
    :class:`TokenEmbedding`) and one linear layer, shared by the indices, gives each index's logits
    (spec §3). Parameter names ``{prefix}head`` (and ``{prefix}head_projection``)."""
    values = grid.indices_per_token * grid.code_dim
    projection = (nn.Dense(values, kernel_init=_dense_init, name=f"{prefix}head_projection")
                  if values != width else (lambda y: y))
    head = nn.Dense(grid.num_codes, kernel_init=_dense_init, name=f"{prefix}head")
    return lambda y: head(projection(y).reshape(*y.shape[:-1], grid.indices_per_token, grid.code_dim))


def _prediction(head, y, tokens, masking: Masking, all_logits: bool, pair_slots: int | None = None):
    """Logits of the masked tokens' indices, their targets and which slots count.

    ``pair_slots`` (paired ratios): the masked tokens of examples 2k and 2k + 1 share row k of
    that many slots, so logits come as [B/2, pair_slots, n, k] (the loss is a mean over the
    batch's masked indices either way)."""
    if all_logits:
        sel, targets, target_mask = y, tokens, masking.masked
    elif pair_slots is not None:
        n = masking.order.shape[1]
        ids, segment, _ = _pair_rows(masking.order, masking.num_visible, n - masking.num_visible, n, pair_slots)
        sel, targets, target_mask = _gather(_pairs(y), ids), _gather(_pairs(tokens), ids), segment >= 0
    else:
        ids = masking.masked_ids
        sel, targets, target_mask = _gather(y, ids), _gather(tokens, ids), masking.masked_valid
    logits = head(sel)
    return {"logits": logits, "targets": targets, "target_mask": target_mask}


# ------------------------------------------------------------- VQ-MAE-AV ---


class _AVStack(nn.Module):
    """The fields the VQ-MAE-AV encoder and decoder share."""
    grids: tuple[_Grid, _Grid]
    width: int
    depth: int
    fusion: str
    num_heads: int
    mlp_ratio: float
    position_init: str


class _AVEncoder(_AVStack):
    @nn.compact
    def __call__(self, tokens: Mapping[str, jax.Array], maskings: Mapping[str, Masking] | None,
                 packed: int | None = None, paired: int | None = None):
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
            x = x + pos[:x.shape[1]] + modality
            if maskings is not None and packed is None:
                x = _gather(x, maskings[g.name].keep)
            xs[g.name] = x
            valid[g.name] = None if maskings is None else maskings[g.name].valid
        fusion = Fusion(self.fusion, self.depth, self.num_heads, self.mlp_ratio, final_norm=True, name="fusion")
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


def _pack_visible(m_a: Masking, m_v: Masking, size: int):
    """One buffer of ``size`` slots: slot j < n_a holds audio token order_a[j], slot
    n_a + j (j < n_v) visual token N_a + order_v[j] (ids into concat(audio, visual)),
    the rest is padding. -> ids [B, size]."""
    n_a = m_a.num_visible[:, None]
    slots = jnp.arange(size)
    ids_a = jnp.take_along_axis(m_a.order, jnp.broadcast_to(jnp.minimum(slots, m_a.order.shape[1] - 1),
                                                            (n_a.shape[0], size)), axis=1)
    j_v = jnp.clip(slots - n_a, 0, m_v.order.shape[1] - 1)
    ids_v = m_a.order.shape[1] + jnp.take_along_axis(m_v.order, j_v, axis=1)
    return jnp.where(slots < n_a, ids_a, ids_v)


def _packed_ranges(size: int, start, n_a, n_v):
    """Where each modality sits in a packed row of ``size`` slots whose example starts at slot
    ``start`` [B] (its n_a visible audio tokens, then its n_v visual ones) -> ({modality: its
    slots [B, size]}, {modality: its first slot [B]})."""
    slots = jnp.arange(size)
    offsets = {"audio": start, "visual": start + n_a}
    valid = {name: (slots >= offsets[name][:, None]) & (slots < (offsets[name] + n)[:, None])
             for name, n in (("audio", n_a), ("visual", n_v))}
    return valid, offsets


def _masking_units(module, grid: _Grid, num_tokens: int) -> tuple[int, int, int]:
    """(units, tokens per unit, floor of visible units) of one modality's masking: whole token
    windows ("frame") or single tokens ("patch"), at least ``min_visible`` units left visible."""
    unit = grid.tokens_per_window if module.mask_unit == "frame" else 1
    units = num_tokens // unit
    return units, unit, min(module.min_visible, units)


def packed_saf_slots(model, num_tokens: Mapping[str, int]) -> int | None:
    """Static size of VQMAEAV's packed SAF encoder buffer, or None if it does not apply.

    With coupled Dirichlet ratios (p_a + p_v = 1) the visible total
    u_a·clip(round(U_a(1 - p_a))) + u_v·clip(round(U_v(1 - p_v))) (U masking units of u
    tokens, the floor ``min_visible``) stays near max(N_a, N_v), far below N_a + N_v. Its
    maximum is found exactly on the host: a pair of unit counts (i, j) can occur iff the
    p_a giving round(U_a(1 - p_a)) = i and the one giving round(U_v p_a) = j overlap
    (closed intervals, widened by 1e-4 for the float32 draw, whose p_a + p_v is 1 within
    a few ulps). A 2 s clip: 361 slots (patch masking) or 376 (frame) instead of 520.
    """
    if model.encoder_fusion != "saf" or model.masking != "dirichlet":
        return None
    n = num_tokens
    (ua, sa, la), (uv, sv, lv) = (_masking_units(model, g, n[g.name]) for g in model._grids())
    i = np.arange(ua + 1)[:, None]  # visible audio units, before the floor
    j = np.arange(uv + 1)[None, :]
    lo = np.maximum(np.maximum(1 - (i + 0.5) / ua, (j - 0.5) / uv), 0.0)
    hi = np.minimum(np.minimum(1 - (i - 0.5) / ua, (j + 0.5) / uv), 1.0)
    total = sa * np.clip(i, la, ua) + sv * np.clip(j, lv, uv)
    size = int(total[lo <= hi + 1e-4].max())
    return size if size < n["audio"] + n["visual"] else None


def _pairs(x):
    """[B, N, ...] -> [B/2, 2N, ...]: examples 2k and 2k + 1 concatenated along the token axis."""
    return x.reshape(x.shape[0] // 2, 2 * x.shape[1], *x.shape[2:])


def _pair_rows(ids, start, count, stride: int, size: int):
    """Lists of examples 2k and 2k + 1 in one row of ``size`` slots: ``ids[2k, start[2k]:][:count[2k]]``,
    then ``stride + ids[2k + 1, start[2k + 1]:][:count[2k + 1]]``, then padding. ``ids`` [B, L] index
    per-example arrays of ``stride`` entries; the rows index :func:`_pairs` of them.

    -> (row ids [B/2, size], segment [B/2, size]: 0 or 1 for the example a slot holds, -1 for
    padding; each example's first slot in its row [B]).
    """
    b, length = ids.shape
    slots = jnp.arange(size)
    c0, c1 = count[0::2, None], count[1::2, None]

    def take(rows, first):  # rows[first + j] for every slot j, clipped (padding reads a real entry)
        return jnp.take_along_axis(rows, jnp.clip(first + slots, 0, length - 1), axis=1)

    row = jnp.where(slots < c0, take(ids[0::2], start[0::2, None]), stride + take(ids[1::2], start[1::2, None] - c0))
    segment = jnp.where(slots < c0, 0, jnp.where(slots < c0 + c1, 1, -1))
    first = jnp.stack([jnp.zeros_like(c0[:, 0]), c0[:, 0]], axis=1).reshape(b)
    return row, segment, first


def paired_slots(model, num_tokens: Mapping[str, int]) -> dict[str, int] | None:
    """Static row sizes for VQMAEAV's paired ratios (None if they are off): per modality the
    masked slots of a pair of examples, and with a SAF encoder its joint visible ``"encoder"`` slots.

    Example 2k + 1 gets example 2k's draw swapped, (p_v, p_a) = (1 - p_a, p_a) up to float32
    rounding, so a modality of U masking units of s tokens keeps
    round(U(1 - p)) + round(U p) ∈ [U - 1, U + 1] units visible over the pair, and with the
    floor l at least max(U - 1, 2l) and at most U + max(l, 1) (a unit clipped up to l means
    the other round() is at most U). A pair of 2 s clips: 161 + 361 = 522 encoder slots for
    2 · 361, and 161 / 361 masked slots for 2 · 159 / 2 · 359.
    """
    if not model.paired_ratios:
        return None
    sizes = {}
    encoder = 0
    for g in model._grids():
        units, unit, floor = _masking_units(model, g, num_tokens[g.name])
        sizes[g.name] = unit * min(units + 1, 2 * units - 2 * floor)
        encoder += unit * min(units + max(floor, 1), 2 * units)
    if model.encoder_fusion == "saf":
        sizes["encoder"] = encoder
    return sizes


class _AVDecoder(_AVStack):
    @nn.compact
    def __call__(self, z, valid, offsets, maskings: Mapping[str, Masking], tokens, all_logits: bool,
                 pair_slots: Mapping[str, int] | None = None):
        mask_token = self.param("mask_token", _pos_init, (self.width,))
        xs = {}
        for g in self.grids:
            x = _unshuffle(z[g.name], valid[g.name], maskings[g.name], mask_token, offsets[g.name])
            pos = _position_param(self, f"{g.name}_pos", g, self.width, self.position_init)
            modality = self.param(f"{g.name}_modality", _pos_init, (self.width,))
            xs[g.name] = x + pos[:x.shape[1]] + modality
        ys = Fusion(self.fusion, self.depth, self.num_heads, self.mlp_ratio, final_norm=False,
                    name="fusion")(xs["audio"], xs["visual"])
        out = {}
        for g, y in zip(self.grids, ys):
            head = _index_head(g, self.width, f"{g.name}_")
            out[g.name] = _prediction(head, y, tokens[g.name], maskings[g.name], all_logits,
                                      None if pair_slots is None else pair_slots[g.name])
        return out


def _ratio_override(mask_ratio, batch: int, owner: str, columns: int):
    """A call-time ratio (scalar, [columns] or [batch, columns]) -> [batch, columns]."""
    r = jnp.asarray(mask_ratio, jnp.float32)
    if r.ndim == 0 or r.shape == (columns,) or r.shape == (batch, columns):
        return jnp.broadcast_to(r, (batch, columns))
    raise ValueError(f"{owner}: mask_ratio has shape {r.shape}; expected a scalar, [{columns}] or "
                     f"[{batch}, {columns}]")


def _check_masking_fields(module) -> None:
    check_choice(module, "mask_unit", MASK_UNITS)
    if not 0.0 <= module.mask_ratio <= 1.0:
        raise ValueError(f"{type(module).__name__}.mask_ratio={module.mask_ratio}: expected a masked "
                         f"fraction in [0, 1]")
    if module.min_visible < 0:
        raise ValueError(f"{type(module).__name__}.min_visible={module.min_visible}: expected >= 0")
    if module.width % module.num_heads:
        raise ValueError(f"{type(module).__name__}: width={module.width} is not a multiple of "
                         f"num_heads={module.num_heads}")


def _mask_modality(module, key, ratio, grid: _Grid, num_tokens: int, batch: int, exact: bool):
    """Masking of one modality; ``exact``: the ratio is the static ``mask_ratio`` field."""
    units, unit, lo = _masking_units(module, grid, num_tokens)
    hi = units
    if exact:  # a fixed ratio known at trace time: an exact, padding-free buffer
        lo = hi = num_visible_units(float(module.mask_ratio), units, lo, units)
    return sample_masking(key, ratio, batch=batch, num_units=units, unit_size=unit,
                          min_visible_units=lo, max_visible_units=hi)


class VQMAEAV(nn.Module):
    """VQ-MAE-AV (see module doc). Defaults: the thesis's final model (CAF-CAF, Dirichlet).

    ``__call__(audio, visual)`` (pre-training forward; needs the ``"mask"`` RNG) returns
    {"audio" | "visual": {"logits" [B, M, n, k], "targets" [B, M, n], "target_mask"
    [B, M], "masked" [B, N], "mask_fraction" [B]}, "global": {"audio" | "visual":
    [B, width]} (if ``global_tokens``)}; feed it to :func:`vqmae_loss`. With paired ratios
    the logits, targets and target mask come per pair of examples: [B/2, M', ...]. ``encode``
    gives every token's encoder output, unmasked, for fine-tuning.
    """

    # Index grids (spec §1.4; clip length [code]: 2 s).
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
    # Transformer (spec §3).
    width: int = 320
    num_heads: int = 4
    mlp_ratio: float = 2.0
    encoder_depth: int = 12
    decoder_depth: int = 4
    encoder_fusion: str = "caf"
    decoder_fusion: str = "caf"
    global_tokens: bool = True  # attention-pooled w_a, w_v (needed for the contrastive loss)
    position_init: str = "normal"  # learned positions from N(0, 0.02²) as the code, or "sincos"
    # Masking (spec §2).
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
        _check_masking_fields(self)
        if len(self.dirichlet_alpha) != 2 or min(self.dirichlet_alpha) <= 0:
            raise ValueError(f"VQMAEAV.dirichlet_alpha={self.dirichlet_alpha}: expected two positive "
                             f"concentrations (audio, visual)")
        if self.paired_ratios and not (self.masking == "dirichlet" and self.ratio_per_example
                                       and self.dirichlet_alpha[0] == self.dirichlet_alpha[1]):
            raise ValueError(f"VQMAEAV.paired_ratios needs masking='dirichlet' (got {self.masking!r}), "
                             f"ratio_per_example=True (got {self.ratio_per_example}) and equal "
                             f"dirichlet_alpha (got {self.dirichlet_alpha}): the swapped draw must have "
                             f"the same distribution")
        for g, prefix in zip(self._grids(), ("audio", "visual")):
            g.check(self.width, prefix)
        super().__post_init__()

    def _grids(self) -> tuple[_Grid, _Grid]:
        return _audio_grid(self), _visual_grid(self)

    def setup(self):
        grids = self._grids()
        common = dict(grids=grids, width=self.width, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                      position_init=self.position_init)
        self.encoder = _AVEncoder(depth=self.encoder_depth, fusion=self.encoder_fusion, **common)
        self.decoder = _AVDecoder(depth=self.decoder_depth, fusion=self.decoder_fusion, **common)
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
            raise ValueError(f"VQMAEAV: audio has {w_a} token windows ({audio.shape[1]} frames / "
                             f"audio_patch_time={g_a.patch_time}) but visual has {w_v} ({visual.shape[1]} "
                             f"frames / visual_patch_time={g_v.patch_time}); the clips must cover the "
                             f"same duration")
        return tokens

    def _pool(self, z, valid):
        return {"audio": self.audio_pool(z["audio"], valid["audio"]),
                "visual": self.visual_pool(z["visual"], valid["visual"])}

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
        maskings = {g.name: _mask_modality(self, k, ratio[:, i], g, tokens[g.name].shape[1], batch, exact)
                    for i, (g, k) in enumerate(zip(self._grids(), (k_a, k_v)))}
        return maskings, ratio

    def __call__(self, audio, visual, *, mask_ratio=None, all_logits: bool = False):
        """Masked pre-training forward pass.

        audio [B, T_a, audio_bins], visual [B, T_v, visual_height, visual_width]: VQ
        indices. mask_ratio: None (the configured masking), or masked fractions
        overriding it: a scalar, (p_a, p_v) or [B, 2] (may be traced). all_logits:
        logits of every token instead of the masked ones only.
        """
        tokens = self.tokenize(audio, visual)
        maskings, _ = self.sample_masking(tokens, mask_ratio)
        # Coupled ratios (not a call-time override, which may not sum to 1): SAF packs both
        # modalities' visible tokens into one buffer of a static bound (packed_saf_slots), and
        # paired ratios put two examples in each row (paired_slots).
        num_tokens = {k: t.shape[1] for k, t in tokens.items()}
        packed = None if mask_ratio is not None else packed_saf_slots(self, num_tokens)
        pairs = None if mask_ratio is not None else paired_slots(self, num_tokens)
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


# -------------------------------------------------------------- VQ-MAE-S ---


class _SStack(nn.Module):
    """The fields a unimodal encoder and decoder share (as _AVStack for VQ-MAE-AV)."""
    grid: _Grid
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    position_init: str


class _SEncoder(_SStack):
    @nn.compact
    def __call__(self, tokens, masking: Masking | None):
        g = self.grid
        x = TokenEmbedding(g.num_codes, g.code_dim, self.width, name="embedding")(tokens)
        pos = _position_param(self, "pos", g, self.width, self.position_init)
        x = x + pos[:x.shape[1]]
        valid = None
        if masking is not None:
            x, valid = _gather(x, masking.keep), masking.valid
        cls = self.param("cls", _pos_init, (self.width,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        if valid is not None:
            valid = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), valid], axis=1)
        z = Stack(self.depth, self.num_heads, self.mlp_ratio, final_norm=True, name="stack")(x, valid)
        return z[:, 0], z[:, 1:], None if valid is None else valid[:, 1:]


class _SDecoder(_SStack):
    @nn.compact
    def __call__(self, cls, z, valid, masking: Masking, tokens, all_logits: bool):
        g = self.grid
        mask_token = self.param("mask_token", _pos_init, (self.width,))
        pos = _position_param(self, "pos", g, self.width, self.position_init, cls_row=True)  # [CLS] at 0
        x = jnp.concatenate([cls[:, None], _unshuffle(z, valid, masking, mask_token)], axis=1)
        x = x + pos[:x.shape[1]]
        y = Stack(self.depth, self.num_heads, self.mlp_ratio, final_norm=False, name="stack")(x)[:, 1:]
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

    def __post_init__(self):
        check_choice(self, "position_init", POSITION_INITS)
        _check_masking_fields(self)
        g = self._grid()
        g.check(self.width, g.name)
        super().__post_init__()

    def _grid(self) -> _Grid:
        raise NotImplementedError

    def setup(self):
        common = dict(grid=self._grid(), width=self.width, num_heads=self.num_heads,
                      mlp_ratio=self.mlp_ratio, position_init=self.position_init)
        self.encoder = _SEncoder(depth=self.encoder_depth, **common)
        self.decoder = _SDecoder(depth=self.decoder_depth, **common)

    def __call__(self, indices, *, mask_ratio=None, all_logits: bool = False):
        """Masked forward pass; ``mask_ratio`` (scalar or [B], may be traced) overrides
        the fixed ratio, ``all_logits`` as in :class:`VQMAEAV`."""
        grid = self._grid()
        tokens = grid.tokenize(indices)
        batch = tokens.shape[0]
        exact = mask_ratio is None
        if exact:
            ratio = self.mask_ratio
        else:
            ratio = jnp.asarray(mask_ratio, jnp.float32)
            if ratio.shape not in ((), (batch,)):
                raise ValueError(f"{type(self).__name__}: mask_ratio has shape {ratio.shape}; expected a "
                                 f"scalar or [{batch}]")
        masking = _mask_modality(self, self.make_rng(MASK_RNG), ratio, grid, tokens.shape[1], batch, exact)
        cls, z, valid = self.encoder(tokens, masking)
        out = self.decoder(cls, z, valid, masking, tokens, all_logits)
        out.update(masked=masking.masked, mask_fraction=1.0 - masking.num_visible / tokens.shape[1])
        return {grid.name: out, "cls": cls}

    def encode(self, indices):
        grid = self._grid()
        cls, z, _ = self.encoder(grid.tokenize(indices), None)
        return {"tokens": {grid.name: z}, "cls": cls}


class VQMAES(_UnimodalMAE):
    """VQ-MAE-S: the audio-only VQ-MAE with a [CLS] token (spec §8; see module doc)."""

    audio_frames: int = 200
    audio_bins: int = 64
    audio_patch_time: int = 10
    audio_patch_freq: int = 4
    audio_codes: int = 256
    audio_code_dim: int = 8
    mlp_ratio: float = 4.0  # [code] timm default; the thesis gives no size for VQ-MAE-S
    mask_unit: str = "frame"  # best in Table C.3; or "patch" (Patch-tf)

    def _grid(self) -> _Grid:
        return _audio_grid(self)


class VQMAEV(_UnimodalMAE):
    """VQ-MAE-V: the video-only counterpart of VQ-MAE-AV (the unimodal baseline of Fig. C.1), with
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


# ------------------------------------------------------------------ losses ---


def masked_cross_entropy(logits, targets, target_mask):
    """Mean cross-entropy over the indices of the slots where ``target_mask`` is True.

    logits [B, M, n, k], targets [B, M, n], target_mask [B, M]. 0 if nothing is masked
    (the code sets that NaN to 0).
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    w = jnp.broadcast_to(target_mask[..., None], ce.shape)
    return jnp.sum(jnp.where(w, ce, 0.0)) / jnp.maximum(jnp.sum(w), 1)


def masked_accuracy(outputs) -> jax.Array:
    """Fraction of the masked indices whose most likely code is the true one."""
    hits = jnp.argmax(outputs["logits"], -1) == outputs["targets"]
    mask = jnp.broadcast_to(outputs["target_mask"][..., None], hits.shape)
    return jnp.sum(hits & mask) / jnp.maximum(jnp.sum(mask), 1)


def info_nce(u, v, temperature: float = 0.5):
    """NT-Xent between paired rows of u, v [B, D] (spec §4 [code], SimCLR).

    Cosine similarities / τ; for each of the 2B items the positive is its partner and
    the 2B - 2 other items are negatives; the mean over the 2B items.
    """
    b = u.shape[0]
    z = jnp.concatenate([u, v], axis=0).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    sim = (z @ z.T) / temperature
    sim = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, sim)
    partner = jnp.concatenate([jnp.arange(b) + b, jnp.arange(b)])
    return jnp.mean(jax.nn.logsumexp(sim, axis=1) - sim[jnp.arange(2 * b), partner])


def vqmae_loss(outputs: Mapping[str, Any], *, temperature: float = 0.5,
               contrastive_weight: float = 1.0, modality_weights: Mapping[str, float] | None = None):
    """L = Σ_modality CE(masked indices) + contrastive_weight · InfoNCE(w_a, w_v) (Eq. 5.5).

    ``outputs``: a VQMAEAV or VQMAES forward pass. Returns (loss, {"ce_audio",
    ["ce_visual", "nce"]}); the InfoNCE term is there when the outputs have global
    tokens and ``contrastive_weight`` is not 0. ``modality_weights`` ({"audio": w_a,
    "visual": w_v}, default 1 each as the thesis) weight the cross-entropies (an ablation
    knob; the reported terms stay unweighted).
    """
    weights = {**{m: 1.0 for m in MODALITIES}, **(modality_weights or {})}
    terms = {}
    for name in MODALITIES:
        if name in outputs:
            o = outputs[name]
            terms[f"ce_{name}"] = masked_cross_entropy(o["logits"], o["targets"], o["target_mask"])
    loss = sum(weights[name[3:]] * ce for name, ce in terms.items())
    if "global" in outputs and contrastive_weight:
        terms["nce"] = info_nce(outputs["global"]["audio"], outputs["global"]["visual"], temperature)
        loss = loss + contrastive_weight * terms["nce"]
    return loss, terms


def asymmetric_loss(logits, labels, *, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                    eps: float = 0.1):
    """Single-label asymmetric loss (Ridnik et al. 2021), the code's ``ASLSingleLabel``.

    With p = softmax(logits): the log-probability of the true class is weighted by
    (1 - p)^γ+, that of every other class by p^γ-, the one-hot target is smoothed to
    (1 - eps)·onehot + eps/C, and the loss is -Σ target · weight · log p, averaged
    over the batch. γ+ = γ- = eps = 0 is the cross-entropy.
    """
    num_classes = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(log_p)
    onehot = jax.nn.one_hot(labels, num_classes)

    def focus(base, gamma):  # base**0 == 1, with a finite gradient at base == 0
        return jnp.ones_like(base) if gamma == 0 else base ** gamma

    weight = jnp.where(onehot > 0, focus(1.0 - p, gamma_pos), focus(p, gamma_neg))
    target = onehot * (1.0 - eps) + eps / num_classes
    return jnp.mean(-jnp.sum(target * weight * log_p, axis=-1))


# ----------------------------------------------------------- fine-tuning ---


class _PostNormLayer(nn.Module):
    """PyTorch ``TransformerEncoderLayer`` / ``TransformerDecoderLayer`` (post-norm, ReLU)
    without dropout; a decoder layer when ``memory`` is given."""

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x, memory=None, memory_valid=None):
        x = _layer_norm("norm1")(x + _attention(self.num_heads, "self_attn")(x, x))
        if memory is not None:
            attn = _attention(self.num_heads, "cross_attn")(x, memory, memory, mask=_attention_mask(memory_valid))
            x = _layer_norm("norm2")(x + attn)
        h = nn.Dense(self.mlp_dim, kernel_init=_dense_init, name="fc1")(x)
        h = nn.Dense(x.shape[-1], kernel_init=_dense_init, name="fc2")(nn.relu(h))
        return _layer_norm("norm3")(x + h)


class Query2Emo(nn.Module):
    """Query2Emo head (after Query2Label): learned per-class queries attend over all tokens.

    tokens [B, N, D] (both modalities' encoder outputs, concatenated) -> transformer
    encoder layers -> a decoder whose queries are C learned label embeddings
    (U[0, 1) init, [code]) -> the C outputs concatenated -> Linear(C·D -> C).
    """

    num_classes: int
    num_heads: int = 8
    encoder_layers: int = 1
    decoder_layers: int = 1  # thesis; the code uses 2
    mlp_dim: int = 2048  # nn.Transformer's default feed-forward size [code]

    @nn.compact
    def __call__(self, tokens, valid=None):
        b, _, d = tokens.shape
        memory = tokens
        for i in range(self.encoder_layers):
            memory = _PostNormLayer(self.num_heads, self.mlp_dim, name=f"encoder_{i}")(memory)
        memory = _layer_norm("encoder_norm")(memory)
        labels = self.param("label_embedding", nn.initializers.uniform(1.0), (self.num_classes, d))
        q = jnp.broadcast_to(labels, (b, self.num_classes, d))
        for i in range(self.decoder_layers):
            q = _PostNormLayer(self.num_heads, self.mlp_dim, name=f"decoder_{i}")(q, memory, valid)
        q = _layer_norm("decoder_norm")(q)
        return nn.Dense(self.num_classes, kernel_init=_dense_init, name="classifier")(
            q.reshape(b, self.num_classes * d))


class VQMAEClassifier(nn.Module):
    """A pre-trained VQMAEAV / VQMAES encoder with an SER head (spec §5; see module doc).

    ``backbone``: the pre-training model (its fields; its decoder is never used, so
    its parameters are not created). ``pooling``: "mean", "attention", "query2emo" or
    "cls" (unimodal backbones). ``__call__(audio, visual)`` (VQMAEAV) or ``__call__(indices)``
    (VQMAES: audio, VQMAEV: visual) -> logits [B, num_classes].
    """

    backbone: nn.Module  # VQMAEAV, VQMAES or VQMAEV
    num_classes: int
    pooling: str = "query2emo"
    query2emo_heads: int = 8
    query2emo_encoder_layers: int = 1
    query2emo_decoder_layers: int = 1
    query2emo_mlp_dim: int = 2048

    def __post_init__(self):
        check_choice(self, "pooling", POOLINGS)
        if not isinstance(self.backbone, (VQMAEAV, _UnimodalMAE)):
            raise TypeError(f"VQMAEClassifier.backbone: expected a VQMAEAV, VQMAES or VQMAEV, got "
                            f"{type(self.backbone).__name__}")
        if self.pooling == "cls" and not isinstance(self.backbone, _UnimodalMAE):
            raise ValueError("VQMAEClassifier.pooling='cls' needs a VQMAES or VQMAEV backbone (VQMAEAV has "
                             "no [CLS] token; use 'attention')")
        super().__post_init__()

    @nn.compact
    def __call__(self, *indices):
        bb = self.backbone
        expected = 2 if isinstance(bb, VQMAEAV) else 1
        if len(indices) != expected:
            raise ValueError(f"VQMAEClassifier: a {type(bb).__name__} backbone reads {expected} index grid(s) "
                             f"({'audio, visual' if expected == 2 else bb._grid().name}), got {len(indices)}")
        if isinstance(bb, VQMAEAV):
            feats = bb.encode(*indices, pool=self.pooling == "attention")
        else:
            feats = bb.encode(*indices)
        streams = [feats["tokens"][m] for m in MODALITIES if m in feats["tokens"]]
        if self.pooling == "query2emo":
            return Query2Emo(self.num_classes, self.query2emo_heads, self.query2emo_encoder_layers,
                             self.query2emo_decoder_layers, self.query2emo_mlp_dim,
                             name="query2emo")(jnp.concatenate(streams, axis=1))
        if self.pooling == "mean":
            pooled = [s.mean(axis=1) for s in streams]
        elif self.pooling == "cls":
            pooled = [feats["cls"]]
        elif "global" in feats:  # attention, pre-trained global tokens
            pooled = [feats["global"][m] for m in MODALITIES]
        else:  # attention pooling initialised here
            pooled = [AttentionPooling(bb.num_heads, bb.mlp_ratio, name=f"{m}_pool")(s)
                      for m, s in zip(MODALITIES, streams)]
        return nn.Dense(self.num_classes, kernel_init=_dense_init, name="head")(
            jnp.concatenate(pooled, axis=-1))


def count_params(tree) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
