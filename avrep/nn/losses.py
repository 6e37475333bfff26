"""Reconstruction losses shared by the models.

Itakura-Saito divergence between power spectra (Févotte et al. 2009), as used by
the audio VQ-VAEs (spec/mdvae.md §2.4, spec/vqmae.md §1.1):
``d_IS(x | x_hat) = x / x_hat - log(x / x_hat) - 1``. The authors' code adds
``eps = 1e-10`` to both arguments and averages over every element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

_REDUCTIONS = ("mean", "sum_bins")


def _reduce(d: jax.Array, reduce: str) -> jax.Array:
  """"mean": over all elements; "sum_bins": sum over the last axis, then mean."""
  if reduce == "mean":
    return jnp.mean(d)
  if reduce == "sum_bins":
    return jnp.mean(jnp.sum(d, axis=-1))
  raise ValueError(f"reduce={reduce!r}: expected one of {_REDUCTIONS}")


def itakura_saito(x: jax.Array, x_hat: jax.Array, eps: float = 1e-10,
                  reduce: str = "mean") -> jax.Array:
  """IS divergence of the power spectrum ``x`` from its estimate ``x_hat``."""
  ratio = (x + eps) / (x_hat + eps)
  return _reduce(ratio - jnp.log(ratio) - 1.0, reduce)


def itakura_saito_from_log(x: jax.Array, log_x_hat: jax.Array,
                           eps: float = 1e-10,
                           reduce: str = "mean") -> jax.Array:
  """IS divergence with ``x_hat = exp(log_x_hat)`` (a decoder's pre-exp output).

  ``(x + eps) exp(-log_x_hat) - log(x + eps) + log_x_hat - 1`` never forms
  ``exp(log_x_hat)``, so it stays finite where x_hat would under/overflow. It
  equals :func:`itakura_saito` up to the eps added to x_hat there.
  """
  x = x + eps
  d = x * jnp.exp(-log_x_hat) - jnp.log(x) + log_x_hat - 1.0
  return _reduce(d, reduce)


def mse(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Mean squared error over all elements."""
  return jnp.mean(jnp.square(x - x_hat))


# SSIM settings of Wang et al. 2004, shared with the evaluation metric (avrep.evaluation.metrics):
# 11-tap Gaussian window (sigma 1.5, truncate 3.5, reflect boundary), K1 = 0.01, K2 = 0.03.
SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5 -> 11-tap window


def ssim_window_matrices(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """``(G_h, G_w)``: ``G_h @ x @ G_w.T`` is the Gaussian-filtered ``[h, w]`` map ``x``,
  cropped to the rows and columns that enter the SSIM mean (5 px borders dropped)."""
  r = SSIM_RADIUS
  if min(h, w) < 2 * r + 1:
    raise ValueError(f"images of {h}x{w} px are smaller than the {2 * r + 1}x{2 * r + 1} SSIM window")

  def gaussian(n):
    return ndimage.gaussian_filter1d(np.eye(n), SSIM_SIGMA, axis=0, mode="reflect", truncate=SSIM_TRUNCATE)

  return gaussian(h)[r:h - r], gaussian(w)[r:w - r]


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Per-image SSIM of ``[N, H, W, C]`` batches (map mean, then channel mean), differentiable.

  The same quantity as ``avrep.evaluation.metrics.ssim``, in the input dtype, so a tokenizer can
  be trained on what it is judged by. Values in ``[0, data_range]``: the luminance term depends
  on the offset.
  """
  g_h, g_w = (jnp.asarray(g, x.dtype) for g in ssim_window_matrices(*x.shape[1:3]))

  def blur(m):  # [5, N, H, W, C] -> [5, N, H', W', C]
    return jnp.einsum("ih,...hwc,jw->...ijc", g_h, m, g_w)

  ux, uy, uxx, uyy, uxy = blur(jnp.stack([x, y, x * x, y * y, x * y]))
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  var_x, var_y, cov = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
  ssim_map = ((2 * ux * uy + c1) * (2 * cov + c2)) / ((ux * ux + uy * uy + c1) * (var_x + var_y + c2))
  return jnp.mean(ssim_map, axis=(1, 2, 3))
