"""Vector quantiser with an exponential-moving-average (EMA) codebook.

This is the VQ-VAE quantiser of van den Oord et al. (2017, appendix A.1) as
implemented in Sonnet v1 and in the authors' PyTorch code ([code-mdvae]; [MDVAE]
Sec. 2.5; keys: docs/REFERENCES.md):

* nearest-neighbour assignment, straight-through gradient;
* commitment loss ``beta * mean((z_e - sg(z_q))**2)``; no codebook loss term,
  because the codebook is not trained by gradient but by EMA statistics;
* EMA of the per-code counts and of the per-code sums of the assigned encoder
  outputs, Laplace-smoothed counts, codebook = sums / smoothed counts.

The codebook and its statistics live in their own variable collection
``"vq_ema"`` (not ``"params"``), so optimisers never see them:

* ``codebook``     [num_codes, code_dim], initialised N(0, 1);
* ``cluster_size`` [num_codes], EMA counts, initialised 0;
* ``embed_sum``    [num_codes, code_dim], EMA sums, initialised to the codebook
  (Sonnet v1), so that codebook == embed_sum / smoothed counts after each step.

Dead-code restarts (``restart_dead_codes=True``; off by default, as in the papers'
code): with the recipe above, a code that receives no vector at the first step gets
``embed_sum / epsilon`` ~ 1e5 times its initial value and is never chosen again (we
measured 32/128 audio codes and 1/512 visual codes in use). A code whose EMA count falls
below ``dead_code_fraction`` of the mean count is moved onto a random encoder output of
the current batch (the codebook-expiry rule of Jukebox and SoundStream). It needs an
``rngs={"vq": key}`` stream in training.

The EMA step runs only when ``train=True`` and ``"vq_ema"`` is mutable
(``apply(..., mutable=["vq_ema"])``). The Laplace-smoothed counts are used to
compute the codebook but not stored (Sonnet v1; the PyTorch code stores them,
which differs by O(epsilon)). Batch statistics are plain ``jnp`` sums over all
leading axes: under ``jax.jit`` with the batch sharded over a mesh, XLA inserts
the all-reduce, so the update uses the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

VQ_COLLECTION = "vq_ema"


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """``|z|^2 - 2 z.e + |e|^2`` for z [N, D] and codebook [K, D] -> [N, K]."""
    return jnp.sum(z * z, axis=-1, keepdims=True) - 2.0 * z @ codebook.T + jnp.sum(codebook * codebook, axis=-1)


class VectorQuantizerEMA(nn.Module):
    """EMA vector quantiser over the last axis of its input (see module doc)."""

    num_codes: int
    code_dim: int
    decay: float = 0.99
    epsilon: float = 1e-5
    commitment_cost: float = 0.25
    restart_dead_codes: bool = False
    dead_code_fraction: float = 0.01

    def setup(self):
        shape = (self.num_codes, self.code_dim)
        self.codebook = self.variable(
            VQ_COLLECTION, "codebook", lambda: jax.random.normal(self.make_rng("params"), shape, jnp.float32)
        )
        self.cluster_size = self.variable(VQ_COLLECTION, "cluster_size", jnp.zeros, (self.num_codes,), jnp.float32)
        self.embed_sum = self.variable(VQ_COLLECTION, "embed_sum", lambda: self.codebook.value)

    def lookup(self, z_e: jax.Array) -> jax.Array:
        """Indices (int32, shape ``z_e.shape[:-1]``) of the nearest codes."""
        self._check_dim(z_e)
        flat = z_e.reshape(-1, self.code_dim).astype(jnp.float32)
        idx = jnp.argmin(squared_distances(flat, self.codebook.value), axis=-1)
        return idx.astype(jnp.int32).reshape(z_e.shape[:-1])

    def quantize_indices(self, indices: jax.Array) -> jax.Array:
        """Code vectors ``[..., code_dim]`` for integer indices ``[...]``."""
        return jnp.take(self.codebook.value, indices, axis=0)

    def __call__(self, z_e: jax.Array, train: bool) -> dict[str, jax.Array]:
        """Quantises ``z_e [..., code_dim]``.

        Returns a dict with ``z_q`` (straight-through, same shape as z_e),
        ``indices`` (int32 ``[...]``), ``commitment_loss``, ``perplexity`` (exp of
        the entropy of the batch's average code usage) and ``usage`` (fraction of
        codes used at least once in the batch); the last three are scalars.
        """
        self._check_dim(z_e)
        # Distances, counts and EMA statistics in float32 whatever the computation dtype (avrep.nn.precision):
        # bfloat16 counts stop being exact integers above 256.
        flat = z_e.reshape(-1, self.code_dim).astype(jnp.float32)
        indices = jnp.argmin(squared_distances(flat, self.codebook.value), axis=-1)
        onehot = jax.nn.one_hot(indices, self.num_codes, dtype=flat.dtype)
        counts = jnp.sum(onehot, axis=0)
        quantized = jnp.take(self.codebook.value, indices, axis=0)

        if train and self.is_mutable_collection(VQ_COLLECTION) and not self.is_initializing():
            d = self.decay
            cluster_size = d * self.cluster_size.value + (1 - d) * counts
            embed_sum = d * self.embed_sum.value + (1 - d) * (onehot.T @ jax.lax.stop_gradient(flat))
            if self.restart_dead_codes:
                cluster_size, embed_sum = self._restart_dead_codes(cluster_size, embed_sum, jax.lax.stop_gradient(flat))
            n = jnp.sum(cluster_size)
            smoothed = (cluster_size + self.epsilon) / (n + self.num_codes * self.epsilon) * n
            self.cluster_size.value = cluster_size
            self.embed_sum.value = embed_sum
            self.codebook.value = embed_sum / smoothed[:, None]

        quantized = quantized.reshape(z_e.shape)
        sg = jax.lax.stop_gradient
        commitment = self.commitment_cost * jnp.mean(jnp.square(z_e.astype(jnp.float32) - sg(quantized)))
        probs = counts / flat.shape[0]
        return dict(
            z_q=z_e + sg(quantized.astype(z_e.dtype) - z_e),
            indices=indices.astype(jnp.int32).reshape(z_e.shape[:-1]),
            commitment_loss=commitment,
            perplexity=jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10))),
            usage=jnp.mean((counts > 0).astype(jnp.float32)),
        )

    def _restart_dead_codes(self, cluster_size, embed_sum, flat):
        """Moves rarely used codes onto random vectors of the batch.

        A restarted code gets the mean count, so that its codebook entry
        (embed_sum / smoothed count) equals the chosen vector and it has as much
        inertia as an average code.
        """
        mean = jnp.mean(cluster_size)
        dead = cluster_size < self.dead_code_fraction * mean
        rows = jax.random.randint(self.make_rng("vq"), (self.num_codes,), 0, flat.shape[0])
        cluster_size = jnp.where(dead, mean, cluster_size)
        embed_sum = jnp.where(dead[:, None], flat[rows] * mean, embed_sum)
        return cluster_size, embed_sum

    def _check_dim(self, z_e):
        if z_e.shape[-1] != self.code_dim:
            raise ValueError(
                f"VectorQuantizerEMA: last axis of the input must be code_dim={self.code_dim}, got shape {z_e.shape}"
            )
