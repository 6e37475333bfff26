"""NMF noise model v_n = W H with a per-frame gain on the speech variance, and the multiplicative updates
of the M-step ([DVAE-SE]; [Lin-thesis] Sec. 6.5's RVAE-VEM baseline), for one utterance, batch-major:
power |x|² [T, F], W [F, K], H [K, T], g [T], the frame mask m [T] (padded frames take no part).

The updates minimise the Itakura–Saito cost sum m (|x|²/V_x + log V_x), V_x = g V_s + W H, in the
authors' order: W, then H (each with the current V_x), then the L1 normalisation of W's columns (H
rescaled, W H unchanged), then g.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The authors' NMF initialisation floor (numpy's float64 eps).
NMF_FLOOR = 2.2e-16


def init_nmf(key, batch: int, num_frames: int, rank: int = 25, num_bins: int = 513):
    """W [B, F, K] and H [B, K, T] drawn from U(0, 1) (clipped at 2.2e-16), g [B, T] = 1: the authors' start."""
    key_w, key_h = jax.random.split(key)
    W = jnp.maximum(jax.random.uniform(key_w, (batch, num_bins, rank)), NMF_FLOOR)
    H = jnp.maximum(jax.random.uniform(key_h, (batch, rank, num_frames)), NMF_FLOOR)
    return W, H, jnp.ones((batch, num_frames), jnp.float32)


def noise_variance(W, H):
    """V_n [T, F] = (W H)^T."""
    return (W @ H).T


def m_step(power, mask, W, H, g, Vs):
    """One M-step: (W, H, g, V_x) after the multiplicative updates, with speech variance ``Vs`` [T, F]
    (gain not applied) or R samples of it [R, T, F] (Monte-Carlo EM: the updates sum over them), and the
    V_x of the updated parameters (Vs's shape; what the authors' reported cost reads)."""
    single = Vs.ndim == 2
    Vs = Vs[None] if single else Vs
    m = mask.astype(power.dtype)[:, None]
    real = mask.astype(bool)

    def ratio(Vx):  # the frame-masked sums over samples of the IS gradient's terms |x|² V_x^-2 and V_x^-1
        return jnp.sum(m * power / jnp.square(Vx), axis=0), jnp.sum(m / Vx, axis=0)

    def variance(W, H, g):
        return g[:, None] * Vs + noise_variance(W, H)

    num, den = ratio(variance(W, H, g))
    W = W * jnp.sqrt((num.T @ H.T) / (den.T @ H.T))
    num, den = ratio(variance(W, H, g))
    H = H * jnp.where(real[None, :], jnp.sqrt((W.T @ num.T) / jnp.where(real[None, :], W.T @ den.T, 1.0)), 1.0)
    norm = jnp.sum(jnp.abs(W), axis=0)
    W, H = W / norm[None, :], H * norm[:, None]
    Vx = variance(W, H, g)
    g_num = jnp.sum(m * power * Vs / jnp.square(Vx), axis=(0, 2))
    g_den = jnp.sum(m * Vs / Vx, axis=(0, 2))
    g = jnp.where(real, g * jnp.sqrt(g_num / jnp.where(real, g_den, 1.0)), g)
    Vx = variance(W, H, g)
    return W, H, g, Vx[0] if single else Vx


def is_cost(power, mask, Vx):
    """Mean over real frames, bins (and samples, for Vx [R, T, F]) of log V_x + |x|² / V_x (the authors'
    reported loss)."""
    m = mask.astype(power.dtype)[:, None]
    samples = 1 if Vx.ndim == 2 else Vx.shape[0]
    return jnp.sum(m * (jnp.log(Vx) + power / Vx)) / (jnp.sum(m) * power.shape[-1] * samples)


def wiener_gain(speech_variance, noise_variance_):
    """v_s / (v_s + v_n): the posterior mean of the speech STFT is this times x."""
    return speech_variance / (speech_variance + noise_variance_)
