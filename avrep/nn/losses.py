"""Reconstruction losses shared by the models.

Itakura-Saito divergence between power spectra (Févotte et al. 2009), as used by
the audio VQ-VAEs (spec/mdvae.md §2.4, spec/vqmae.md §1.1):
``d_IS(x | x_hat) = x / x_hat - log(x / x_hat) - 1``. The authors' code adds
``eps = 1e-10`` to both arguments and averages over every element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
