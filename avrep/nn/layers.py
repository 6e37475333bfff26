"""Convolution layers with PyTorch-style padding and CPU-friendly layouts; dense layer stacks.

``Conv`` and ``ConvTranspose`` hold exactly the variables of ``flax.linen.Conv``
/ ``flax.linen.ConvTranspose`` (``kernel`` [*k, in, out], ``bias`` [out], same
initialisers) and compute exactly the same function as

* ``nn.Conv(features, k, strides=s, padding=[(p, p)] * ndim)`` and
* ``nn.ConvTranspose(features, k, strides=s, padding=[(k-1-p, k-1-p)] * ndim)``

whose output sizes are those of PyTorch's ``ConvNd(..., k, s, p)`` and
``ConvTransposeNd(..., k, s, p)``. Checkpoints therefore stay plain flax (a
PyTorch ConvTranspose weight ``[in, out, *k]`` maps to ``kernel =
flip(moveaxis(w, (0, 1), (-2, -1)), spatial axes)``, a Conv weight
``[out, in, *k]`` to ``moveaxis(w, (0, 1), (-1, -2))``). Only the way the
function is computed differs, selected by ``impl``:

* ``"xla"``: ``lax.conv_general_dilated`` / ``lax.conv_transpose``, as flax.
* ``"fast"`` (default): training steps of the MDVAE VQ-VAEs measured ~5×
  (audio) and ~12× (visual) faster on a 2-core CPU than with ``"xla"``
  (benchmarks/scratch_vqvae_perf.py). Every layer becomes stride-1
  convolutions, because XLA's CPU backend is slow on strided and input-dilated
  convolutions and on their gradients:

  - strided conv -> space-to-depth: each s×s block of the padded input
    becomes one position with s^d·C channels and the kernel is regrouped into
    a ceil(k/s)-tap kernel over those channels (same multiply count);
  - transposed conv -> one stride-1 conv per output phase (the s^d
    sub-grids of the output), each with the taps of the kernel that reach that
    phase, interleaved afterwards; no multiplications by the zeros of the
    dilated input. Its custom gradient is the adjoint strided conv (via
    space-to-depth) for the input and one matmul for the kernel;
  - each stride-1 conv (``_conv_s1``) pads its output up to its input size
    (XLA's CPU convolution is ~2× slower when the output is smaller than the
    input) and has a custom gradient: the input gradient is the usual full
    convolution, the kernel gradient one matmul over materialised patches
    (XLA's own kernel-gradient convolution is 3-10× slower on CPU).

``BatchNorm`` is ``flax.linen.BatchNorm`` over the channel axis (same variables, same function), with
PyTorch's two behaviours flax lacks: batch statistics without touching the running ones, and the unbiased
running variance.

``DenseStack`` is a stack of Dense layers with a named activation (``ACTIVATIONS``);
``ConcatDense`` a Dense layer on a concatenation, applied input by input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

IMPLS = ("xla", "fast")
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}
_SPATIAL = "HWD"


def _dimension_numbers(ndim):
    spatial = _SPATIAL[:ndim]
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _crop(y, sizes):
    return y[(slice(None),) + tuple(slice(0, n) for n in sizes)]


def _lax_conv_s1(x, kernel, pads):
    """Stride-1 lax conv with (lo, hi) pads, computed at >= the input size."""
    ndim = kernel.ndim - 2
    sizes = x.shape[1:-1]
    outs = [n + lo + hi - k + 1 for n, (lo, hi), k in zip(sizes, pads, kernel.shape)]
    pads = [(lo, hi + max(0, n - o)) for n, o, (lo, hi) in zip(sizes, outs, pads)]
    y = jax.lax.conv_general_dilated(x, kernel, (1,) * ndim, pads, dimension_numbers=_dimension_numbers(ndim))
    return _crop(y, outs)


def _shifted(x, pads):
    return jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x, kernel, pads):
    """Stride-1 convolution with (lo, hi) pads per dim and a matmul dW."""
    return _lax_conv_s1(x, kernel, pads)


def _conv_s1_fwd(x, kernel, pads):
    return _conv_s1(x, kernel, pads), (x, kernel)


def _conv_s1_bwd(pads, res, dy):
    x, kernel = res
    ndim = kernel.ndim - 2
    ks = kernel.shape[:ndim]
    c, o = kernel.shape[-2:]
    taps = list(np.ndindex(*ks))
    flipped = jnp.flip(kernel, tuple(range(ndim))).swapaxes(-1, -2)
    dx = _lax_conv_s1(dy, flipped, [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(ks, pads)])
    # dW[t] = sum_n xpad[n + t] dy[n]: one matmul over all positions,
    # materialising the cheaper side: the T shifted copies of dy in x's frame
    # (dy[m + lo - t] pairs with x[m]) or the T patches of xpad (im2col).
    if o < c:
        d = [
            _shifted(
                dy, [(a - lo, nx - ny - a + lo) for a, nx, ny, (lo, _) in zip(t, x.shape[1:-1], dy.shape[1:-1], pads)]
            )
            for t in taps
        ]
        d = d[0] if len(d) == 1 else jnp.concatenate(d, axis=-1)
        dw = x.reshape(-1, c).T @ d.reshape(-1, len(taps) * o)
        dw = jnp.moveaxis(dw.reshape(c, *ks, o), 0, -2)
    else:
        xp = _shifted(x, pads)
        p = [xp[(slice(None),) + tuple(slice(a, a + n) for a, n in zip(t, dy.shape[1:-1]))] for t in taps]
        p = p[0] if len(p) == 1 else jnp.concatenate(p, axis=-1)
        dw = p.reshape(-1, len(taps) * c).T @ dy.reshape(-1, o)
        dw = dw.reshape(*ks, c, o)
    return dx, dw


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def _space_to_depth(x, stride):
    """[B, *(n*s), C] -> [B, *n, s^d*C], channel order (phase..., C)."""
    b, c, ndim = x.shape[0], x.shape[-1], x.ndim - 2
    blocks = [n // stride for n in x.shape[1:-1]]
    x = x.reshape(b, *[v for n in blocks for v in (n, stride)], c)
    perm = [0] + [1 + 2 * i for i in range(ndim)] + [2 + 2 * i for i in range(ndim)] + [1 + 2 * ndim]
    return x.transpose(perm).reshape(b, *blocks, -1)


def _check_impl(impl):
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLS}")


def conv(x, kernel, stride: int, padding: int, impl: str = "fast"):
    """``nn.Conv`` (no bias) with stride and symmetric PyTorch padding."""
    _check_impl(impl)
    ndim = kernel.ndim - 2
    pads = [(padding, padding)] * ndim
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, (stride,) * ndim, pads, dimension_numbers=_dimension_numbers(ndim)
        )
    if stride == 1:
        return _conv_s1(x, kernel, tuple(pads))
    # Space-to-depth: tap j = s*a + b reads xpad[s*(o + a) + b], i.e. tap a of
    # a ceil(k/s)-tap conv over the s-blocks of xpad, channel group b.
    s, k = stride, kernel.shape[0]
    taps = -(-k // s)
    sizes = x.shape[1:-1]
    outs = [(n + 2 * padding - k) // s + 1 for n in sizes]
    x = _shifted(x, [(padding, s * (o + taps - 1) - n - padding) for o, n in zip(outs, sizes)])  # hi < 0 crops
    x = _space_to_depth(x, s)
    # select[a, b, j] = (j == s*a + b); taps beyond k are zero.
    select = (s * np.arange(taps)[:, None, None] + np.arange(s)[:, None] == np.arange(k)).astype(np.float32)
    letters = "pqr"[:ndim], "uvw"[:ndim], "jkl"[:ndim]
    spec = ",".join(a + b + j for a, b, j in zip(*letters))
    spec += f",{letters[2]}co->{letters[0]}{letters[1]}co"
    kernel = jnp.einsum(spec, *([select.astype(kernel.dtype)] * ndim), kernel)
    kernel = kernel.reshape(*([taps] * ndim), -1, kernel.shape[-1])
    return _conv_s1(x, kernel, ((0, 0),) * ndim)


def conv_transpose(x, kernel, stride: int, padding: int, impl: str = "fast"):
    """``nn.ConvTranspose`` (no bias) with PyTorch's ``padding`` semantics."""
    _check_impl(impl)
    ndim = kernel.ndim - 2
    k, s = kernel.shape[0], stride
    lo = k - 1 - padding  # lax padding of the stride-dilated input
    if impl == "xla":
        return jax.lax.conv_transpose(
            x, kernel, (s,) * ndim, [(lo, lo)] * ndim, dimension_numbers=_dimension_numbers(ndim)
        )
    if s == 1:
        return _conv_s1(x, kernel, ((lo, lo),) * ndim)
    if k < s:
        raise ValueError(f"impl='fast' needs kernel_size >= stride, got {k} < {s}")
    return _conv_transpose_phases(x, kernel, s, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_transpose_phases(x, kernel, s, padding):
    """Strided transposed conv as one stride-1 conv per output phase."""
    # Output s*m + r sums x[m + d] K[s*d + lo - r] over the d giving a valid
    # tap: phase r is a stride-1 conv of x with the taps j = lo - r (mod s).
    ndim = kernel.ndim - 2
    k = kernel.shape[0]
    lo = k - 1 - padding
    sizes = x.shape[1:-1]
    outs = [s * (n - 1) + k - 2 * padding for n in sizes]
    blocks = [-(-o // s) for o in outs]
    phases = []
    for r in np.ndindex(*([s] * ndim)):
        first = [(lo - ri) % s for ri in r]
        pads = []
        for ri, f, nb, n in zip(r, first, blocks, sizes):
            d = (ri + np.arange(f, k, s) - lo) // s  # offsets of the taps, in order
            pads.append((int(-d[0]), int(nb + d[-1] - n)))
        taps = kernel[tuple(slice(f, None, s) for f in first)]
        phases.append(_lax_conv_s1(x, taps, pads))
    # Interleave: [B, *blocks, (r...), O] -> [B, *(blocks*s), O].
    b, o = x.shape[0], kernel.shape[-1]
    y = jnp.stack(phases, axis=-2).reshape(b, *blocks, *([s] * ndim), o)
    perm = [0] + [v for i in range(ndim) for v in (1 + i, 1 + ndim + i)]
    y = y.transpose(perm + [1 + 2 * ndim])
    return _crop(y.reshape(b, *[nb * s for nb in blocks], o), outs)


def _conv_transpose_phases_fwd(x, kernel, s, padding):
    return _conv_transpose_phases(x, kernel, s, padding), (x, kernel)


def _conv_transpose_phases_bwd(s, padding, res, dy):
    x, kernel = res
    ndim = kernel.ndim - 2
    ks = kernel.shape[:ndim]
    c, o = kernel.shape[-2:]
    # The input gradient is the strided conv with the flipped kernel (the
    # adjoint), run through the space-to-depth path: one exact conv.
    flipped = jnp.flip(kernel, tuple(range(ndim))).swapaxes(-1, -2)
    dx = conv(dy, flipped, s, padding, "fast")
    # dW[j] = sum_i x[i] dy[s*i + lo - j] = x^T @ dypad[s*i + k-1-j]: one
    # matmul against the k^d strided views of dy in x's frame (k^d*O values
    # per position; the x side would need k^d*C, and O <= C in these models).
    dy = _shifted(dy, [(padding, padding)] * ndim)
    views = [
        dy[(slice(None),) + tuple(slice(k - 1 - j, k + s * (n - 1) - j, s) for j, k, n in zip(t, ks, x.shape[1:-1]))]
        for t in np.ndindex(*ks)
    ]
    d = jnp.concatenate(views, axis=-1)
    dw = x.reshape(-1, c).T @ d.reshape(-1, len(views) * o)
    return dx, jnp.moveaxis(dw.reshape(c, *ks, o), 0, -2)


_conv_transpose_phases.defvjp(_conv_transpose_phases_fwd, _conv_transpose_phases_bwd)


class _ConvBase(nn.Module):
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    ndim: int = 1
    impl: str = "fast"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    def _apply(self, fn, x):
        if x.ndim != self.ndim + 2:
            raise ValueError(
                f"{type(self).__name__}: expected a [batch, *{self.ndim} spatial, channels] input, got shape {x.shape}"
            )
        shape = (self.kernel_size,) * self.ndim + (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        # Same function either way; "xla" is one op per layer, so an eager
        # (un-jitted) init compiles a handful of ops instead of hundreds.
        impl = "xla" if self.is_initializing() else self.impl
        y = fn(x, kernel, self.stride, self.padding, impl)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return y


class Conv(_ConvBase):
    """``nn.Conv`` with stride ``stride`` and PyTorch padding ``padding``."""

    @nn.compact
    def __call__(self, x):
        return self._apply(conv, x)


class ConvTranspose(_ConvBase):
    """``nn.ConvTranspose`` matching PyTorch's ``ConvTranspose(k, s, p)``."""

    @nn.compact
    def __call__(self, x):
        return self._apply(conv_transpose, x)


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last, as ``nn.BatchNorm(momentum, epsilon)``.

    Same variables (``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``, initialised 0 / 1)
    and, with the defaults, the same function, operation for operation (tested bitwise equal): the batch
    variance is E[x²] − E[x]² clipped at 0, and ``running = momentum · running + (1 − momentum) · batch``
    (flax's convention: ``momentum=0.9`` is PyTorch's 0.1).

    ``__call__(x, use_running_average, update_stats=True)``: with ``use_running_average`` the stored
    statistics normalise; otherwise the batch's, and they update the stored ones only if ``update_stats``
    (``nn.BatchNorm`` always updates, so it cannot normalise with batch statistics in an inference call
    whose ``batch_stats`` are immutable). ``unbiased_running_var``: the running variance averages the
    unbiased batch variance (n / (n − 1) times the biased one, n = elements per channel), as PyTorch's
    ``BatchNorm1d``/``2d``; normalisation always uses the biased one, as both frameworks.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: bool, update_stats: bool = True):
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            square = jax.lax.square(x32)  # the order of flax's operations, for bitwise equal gradients
            mean, mean2 = x32.mean(axes), square.mean(axes)
            var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
            if update_stats and not self.is_initializing():
                n = x.size // features
                batch_var = var * (n / (n - 1)) if self.unbiased_running_var and n > 1 else var
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * batch_var
        shape = (1,) * (x.ndim - 1) + (features,)
        mean, var = jnp.expand_dims(mean, axes), jnp.expand_dims(var, axes)
        y = x - mean
        mul = jax.lax.rsqrt(var + self.epsilon)
        mul *= self.param("scale", nn.initializers.ones, (features,), jnp.float32).reshape(shape)
        y *= mul
        y += self.param("bias", nn.initializers.zeros, (features,), jnp.float32).reshape(shape)
        # Statistics in float32, the output in the input's dtype (bfloat16 under mixed precision).
        return jnp.asarray(y, jnp.result_type(x, jnp.float32)).astype(x.dtype)


class ConcatDense(nn.Module):
    """``nn.Dense(features)`` on the concatenation of inputs of sizes ``sizes``.

    One kernel [sum(sizes), features] and one bias, but applied input by input
    (concat(x_i) @ W = sum_i x_i @ W_i), so that inputs known before a recurrence
    (x_t, w, z_av_t) are projected for all frames outside the scan and only the
    recurrent one (h_t) inside it.
    """

    sizes: tuple[int, ...]
    features: int

    def setup(self):
        self.kernel = self.param("kernel", nn.initializers.lecun_normal(), (sum(self.sizes), self.features))
        self.bias = self.param("bias", nn.initializers.zeros, (self.features,))

    def part(self, i: int, x):
        """``x @ W_i``: the contribution of input ``i`` (no bias)."""
        start = sum(self.sizes[:i])
        return x @ self.kernel[start : start + self.sizes[i]]


class DenseStack(nn.Module):
    """Dense layers of widths ``features``, each followed by ``act`` (the last one
    only if ``final_act``). Empty ``features``: the identity."""

    features: tuple[int, ...]
    act: str
    final_act: bool = True

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            if self.final_act or i < len(self.features) - 1:
                x = ACTIVATIONS[self.act](x)
        return x
