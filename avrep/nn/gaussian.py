"""Diagonal-Gaussian utilities shared by the VAE models (MDVAE, DSAE, DVAE family).

A Gaussian is given by its mean and its log-variance (sigma^2 = exp(logvar)), the
parameterisation of the MDVAE code ([code-mdvae]; [Sadok-thesis] Table B.3; keys:
docs/REFERENCES.md). Densities and KLs are for the diagonal Gaussian over the **last
axis** (the event axis): they sum over it and keep every leading axis (batch, time), so
callers choose how to reduce those.

* ``reparameterize`` / ``sample``: z = mean + exp(logvar / 2) * eps, eps ~ N(0, I).
  ``reparameterize`` takes the noise, so a model can draw the noise of every frame
  at once outside a ``lax.scan`` and feed it in as a scanned input.
* ``kl_divergence``: closed-form KL(q || p) between diagonal Gaussians
  ([MDVAE] Sec. 2.4, Eq. 12); p defaults to N(0, I).
* ``gaussian_log_likelihood`` / ``gaussian_nll``: log N(x; mean, exp(logvar))
  with the log(2 pi) constant; logvar defaults to 0, the unit-variance observation
  model of [MDVAE] Sec. 2.2, Eqs. 2–3 (NLL = SSE / 2 + D/2 log(2 pi)).
* ``GaussianHead``: a Dense layer giving a Gaussian's mean and log-variance.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from avrep.nn.precision import at_least_float32

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
    """``mean + exp(logvar / 2) * eps`` for standard-normal noise ``eps``."""
    return mean + jnp.exp(0.5 * logvar) * eps


def sample(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """One reparameterised sample of N(mean, exp(logvar)) (shape of ``mean``)."""
    eps = jax.random.normal(key, jnp.shape(mean), jnp.result_type(mean))
    return reparameterize(mean, logvar, eps)


def kl_divergence(
    mean_q: jax.Array, logvar_q: jax.Array, mean_p: jax.Array | float = 0.0, logvar_p: jax.Array | float = 0.0
) -> jax.Array:
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), summed over the last axis.

    ``1/2 sum_d [logvar_p - logvar_q + (exp(logvar_q) + (mean_q - mean_p)^2) / exp(logvar_p) - 1]``.
    The default p is N(0, I). Arguments broadcast against each other. Computed in float32 at least (bfloat16
    inputs: mixed precision, ``avrep.nn.precision``).
    """
    mean_q, logvar_q, mean_p, logvar_p = map(at_least_float32, (mean_q, logvar_q, mean_p, logvar_p))
    d = logvar_p - logvar_q + jnp.exp(logvar_q - logvar_p) + jnp.square(mean_q - mean_p) * jnp.exp(-logvar_p) - 1.0
    return 0.5 * jnp.sum(d, axis=-1)


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, logvar: jax.Array | float = 0.0) -> jax.Array:
    """log N(x; mean, exp(logvar)) summed over the last axis; unit variance by default; float32 at least."""
    x, mean, logvar = map(at_least_float32, (x, mean, logvar))
    d = jnp.square(x - mean) * jnp.exp(-logvar) + logvar + LOG_2PI
    return -0.5 * jnp.sum(d, axis=-1)


def gaussian_nll(x: jax.Array, mean: jax.Array, logvar: jax.Array | float = 0.0) -> jax.Array:
    """Negative of :func:`gaussian_log_likelihood`."""
    return -gaussian_log_likelihood(x, mean, logvar)


class GaussianHead(nn.Module):
    """Mean and log-variance of a diagonal Gaussian: one Dense(2 * dim), split."""

    dim: int

    @nn.compact
    def __call__(self, x):
        mean, logvar = jnp.split(nn.Dense(2 * self.dim)(x), 2, axis=-1)
        return mean, logvar
