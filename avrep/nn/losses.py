"""Losses shared by the models: reconstruction (Itakura-Saito, MSE, SSIM) and token / contrastive /
classification losses (masked cross-entropy, InfoNCE, asymmetric loss).

Itakura-Saito divergence between power spectra (Févotte et al. 2009), as used by
the audio VQ-VAEs ([MDVAE] Sec. 2.5, [Sadok-thesis] Sec. 5.2.1; keys: docs/REFERENCES.md):
``d_IS(x | x_hat) = x / x_hat - log(x / x_hat) - 1``. The authors' code adds
``eps = 1e-10`` to both arguments and averages over every element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from avrep.nn.precision import at_least_float32

_REDUCTIONS = ("mean", "sum_bins")


def _reduce(d: jax.Array, reduce: str) -> jax.Array:
    """ "mean": over all elements; "sum_bins": sum over the last axis, then mean."""
    if reduce == "mean":
        return jnp.mean(d)
    if reduce == "sum_bins":
        return jnp.mean(jnp.sum(d, axis=-1))
    raise ValueError(f"reduce={reduce!r}: expected one of {_REDUCTIONS}")


def itakura_saito(x: jax.Array, x_hat: jax.Array, eps: float = 1e-10, reduce: str = "mean") -> jax.Array:
    """IS divergence of the power spectrum ``x`` from its estimate ``x_hat``."""
    ratio = (at_least_float32(x) + eps) / (at_least_float32(x_hat) + eps)
    return _reduce(ratio - jnp.log(ratio) - 1.0, reduce)


def itakura_saito_from_log(x: jax.Array, log_x_hat: jax.Array, eps: float = 1e-10, reduce: str = "mean") -> jax.Array:
    """IS divergence with ``x_hat = exp(log_x_hat)`` (a decoder's pre-exp output).

    ``(x + eps) exp(-log_x_hat) - log(x + eps) + log_x_hat - 1`` never forms
    ``exp(log_x_hat)``, so it stays finite where x_hat would under/overflow. It
    equals :func:`itakura_saito` up to the eps added to x_hat there.
    """
    x, log_x_hat = at_least_float32(x) + eps, at_least_float32(log_x_hat)
    d = x * jnp.exp(-log_x_hat) - jnp.log(x) + log_x_hat - 1.0
    return _reduce(d, reduce)


def mse(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Mean squared error over all elements (float32 at least)."""
    return jnp.mean(jnp.square(at_least_float32(x) - at_least_float32(x_hat)))


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

    return gaussian(h)[r : h - r], gaussian(w)[r : w - r]


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


def masked_cross_entropy(logits, targets, target_mask):
    """Mean cross-entropy over the indices of the slots where ``target_mask`` is True.

    logits [B, M, n, k], targets [B, M, n], target_mask [B, M]. 0 if nothing is masked
    (the code sets that NaN to 0).
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    w = jnp.broadcast_to(target_mask[..., None], ce.shape)
    return jnp.sum(jnp.where(w, ce, 0.0)) / jnp.maximum(jnp.sum(w), 1)


def info_nce(u, v, temperature: float = 0.5):
    """NT-Xent between paired rows of u, v [B, D] ([Sadok-thesis] Eq. 5.4; form and τ: [code-vqmae-av];
    SimCLR).

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


def asymmetric_loss(logits, labels, *, gamma_pos: float = 0.0, gamma_neg: float = 4.0, eps: float = 0.1):
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
        return jnp.ones_like(base) if gamma == 0 else base**gamma

    weight = jnp.where(onehot > 0, focus(1.0 - p, gamma_pos), focus(p, gamma_neg))
    target = onehot * (1.0 - eps) + eps / num_classes
    return jnp.mean(-jnp.sum(target * weight * log_p, axis=-1))
