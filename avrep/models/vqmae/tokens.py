"""VQ-MAE tokens: index grids <-> tokens, grid layouts (:class:`_Grid`), index checks, embeddings, logits head.

**Tokens** ([Sadok-thesis] Sec. 5.2.2 and 5.3.1). The frozen VQ-VAEs give index grids: audio ``[B, T_a, D']``
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

**Inputs.** Index grids must be integers with the configured frequency / spatial
sizes, a whole number (≥ 1) of token windows in time, at most ``*_frames`` frames,
and the same number of token windows in both modalities (same duration); a
ValueError names the argument and field. Index values cannot be checked under jit:
call :func:`check_indices` on the host (the models call it themselves when their
inputs are concrete, i.e. outside jit). Under jit an out-of-range index (negative
ones included) embeds as NaN, so the loss turns NaN instead of silently wrapping.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from avrep.nn.attention import dense_init, sincos_positions

POSITION_INITS = ("normal", "sincos")
MODALITIES = ("audio", "visual")

_pos_init = nn.initializers.truncated_normal(stddev=0.02)


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


def _check_windows(where: str, frames: int, window: int, field: str) -> None:
    if frames < window:
        raise ValueError(
            f"{where}: a clip of {frames} frames is too short for one token window ({field}={window} frames)"
        )
    if frames % window:
        raise ValueError(
            f"{where}: {frames} frames is not a whole number of token windows "
            f"({field}={window}); crop or pad the clip to a multiple of {window}"
        )


def _check_divisible(where: str, size: int, what: str, patch: int, field: str) -> None:
    if size % patch:
        raise ValueError(f"{where}: {what} {size} is not a multiple of {field}={patch}")


def tokenize_audio(indices, patch_time: int = 10, patch_freq: int = 4):
    """Audio index grid [B, T, D'] -> tokens [B, (T/t)(D'/d), d·t].

    Token n = (time group, frequency group), time-group major; inside a token the
    indices run (frequency, time): the code's ``'b (t1 t2) (c1 l1) -> b (t1 c1) (l1 t2)'``.
    """
    if jnp.ndim(indices) != 3:
        raise ValueError(f"tokenize_audio: indices have shape {jnp.shape(indices)}; expected [batch, frames, bins]")
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
        raise ValueError(
            f"tokenize_visual: indices have shape {jnp.shape(indices)}; expected [batch, frames, height, width]"
        )
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
        raise TypeError(
            f"{where}: check_indices needs concrete values; call it on the host, outside "
            f"jit (a jitted function cannot raise on values)"
        )
    a = np.asarray(indices)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{where}: VQ indices must be integers, got dtype {a.dtype}")
    if a.size == 0:
        return
    bad = (a < 0) | (a >= num_codes)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{where}: VQ indices must lie in [0, {num_codes}) (the codebook size); found "
            f"values in [{a.min()}, {a.max()}], e.g. {a[pos]} at position {pos}"
        )


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
            _check_divisible(
                where,
                size,
                f"{prefix}_{what}",
                self.patch_space,
                f"{prefix}_patch_{'freq' if self.name == 'audio' else 'size'}",
            )
        if self.max_frames < self.patch_time or self.max_frames % self.patch_time:
            raise ValueError(
                f"{where}.{self.frames_field}={self.max_frames} must be a positive multiple of "
                f"{prefix}_patch_time={self.patch_time}"
            )
        if self.code_dim < 1:
            raise ValueError(f"{where}.{prefix}_code_dim={self.code_dim} must be positive")

    def tokenize(self, x):
        """Checks an index grid against the layout; returns its tokens [B, N, indices_per_token]."""
        where = self.owner
        shape = tuple(jnp.shape(x))
        expected = (len(self.spatial) + 2, *self.spatial)
        if len(shape) != expected[0] or shape[2:] != self.spatial:
            dims = ", ".join(str(s) for s in self.spatial)
            raise ValueError(f"{where}: {self.name} indices have shape {shape}; expected [batch, frames, {dims}]")
        if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
            raise TypeError(f"{where}: {self.name} indices must be integers, got {jnp.result_type(x)}")
        frames = shape[1]
        _check_windows(f"{where} ({self.name})", frames, self.patch_time, "patch_time")
        if frames > self.max_frames:
            raise ValueError(
                f"{where}: {self.name} clip has {frames} frames, more than "
                f"{self.frames_field}={self.max_frames} (the position embeddings' length)"
            )
        if isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer):
            check_indices(x, self.num_codes, f"{where} {self.name}")
        if len(self.spatial) == 1:
            return tokenize_audio(x, self.patch_time, self.patch_space)
        return tokenize_visual(x, self.patch_time, self.patch_space)


def _audio_grid(model) -> _Grid:
    """The audio grid of a model with the ``audio_*`` fields (VQMAEAV, VQMAES)."""
    return _Grid(
        "audio",
        type(model).__name__,
        model.audio_frames,
        (model.audio_bins,),
        model.audio_patch_time,
        model.audio_patch_freq,
        model.audio_codes,
        model.audio_code_dim,
        "audio_frames",
    )


def _visual_grid(model) -> _Grid:
    """The visual grid of a model with the ``visual_*`` fields (VQMAEAV, VQMAEV)."""
    return _Grid(
        "visual",
        type(model).__name__,
        model.visual_frames,
        (model.visual_height, model.visual_width),
        model.visual_patch_time,
        model.visual_patch_size,
        model.visual_codes,
        model.visual_code_dim,
        "visual_frames",
    )


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
            x = nn.Dense(self.width, kernel_init=dense_init, name="projection")(x)
        return x


def _index_head(grid: _Grid, width: int, prefix: str):
    """Decoder tokens [B, M, width] -> logits [B, M, n, num_codes]: each token is split into its n indices'
    code_dim values (after a linear projection to n·code_dim when that differs from the width, as in
    :class:`TokenEmbedding`) and one linear layer, shared by the indices, gives each index's logits
    ([Sadok-thesis] Sec. 5.2.5; [code-vqmae-av]). Parameter names ``{prefix}head`` (and ``{prefix}head_projection``)."""
    values = grid.indices_per_token * grid.code_dim
    projection = (
        nn.Dense(values, kernel_init=dense_init, name=f"{prefix}head_projection") if values != width else (lambda y: y)
    )
    head = nn.Dense(grid.num_codes, kernel_init=dense_init, name=f"{prefix}head")
    return lambda y: head(projection(y).reshape(*y.shape[:-1], grid.indices_per_token, grid.code_dim))
