"""Monte-Carlo EM speech enhancement with a frame-wise VAE speech prior and an NMF noise model: the
audio-only baseline of [AV-slides]' AV-CVAE section (Leglaive et al.'s VAE + NMF algorithm). The slides give
no settings; the defaults below are avrep's choices (the NMF rank as the VEM's).

Per utterance: x_t ~ N_c(0, g_t v_s(z_t) + (W H)_t), z_t ~ N(0, I), the VAE decoder frozen.

* E-step: R samples of z from p(z | x; W, H, g) by a random-walk Metropolis–Hastings chain per frame
  (proposal z + sqrt(proposal_variance) N(0, I); a chain of ``mh_steps`` moves, the first ``burn_in``
  dropped), continuing from the last sample of the previous iteration; the first chain starts at the
  encoder's posterior mean on the noisy power.
* M-step: the multiplicative NMF / gain updates summed over the R samples (:func:`nmf.m_step`).
* Estimate: s_t = (1/R') sum_r g v_s(z^(r)) / (g v_s(z^(r)) + v_n) x_t over ``wiener_samples`` samples
  drawn after ``wiener_burn_in`` further moves.

Batched like the VEM: one compiled ``lax.scan`` over iterations, ``vmap``-ped over utterances, padded
frames excluded (a frame-wise prior: padding changes nothing).

:func:`mcem_av` is the same algorithm with an AV-CVAE (:mod:`av_cvae`): z's prior is the visual prior
p(z | v) of each frame's lip image and the decoder reads the lips too ([AV-slides]).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from avrep.models.dvae import VAE
from avrep.models.enhancement import nmf
from avrep.models.enhancement.priors import noisy_stft


@dataclasses.dataclass(frozen=True)
class MCEMSettings:
    nmf_rank: int = 25
    num_iterations: int = 100
    mh_steps: int = 40
    burn_in: int = 30
    proposal_variance: float = 0.01
    wiener_samples: int = 25
    wiener_burn_in: int = 75

    def __post_init__(self):
        for name in ("nmf_rank", "num_iterations", "mh_steps", "wiener_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MCEMSettings.{name}={value!r}: expected a positive int")
        if not 0 <= self.burn_in < self.mh_steps:
            raise ValueError(f"MCEMSettings.burn_in={self.burn_in!r}: expected 0 <= burn_in < mh_steps")


def _metropolis_hastings(decode, power, Vn, g, z, key, steps: int, keep: int, proposal_std: float, prior=(0.0, 0.0)):
    """``steps`` MH moves of every frame's z [T, Z] under the prior N(mean, exp(log-variance)) ``prior`` (default
    N(0, I); AV-CVAE: the visual prior of each frame); returns (last z, the last ``keep`` samples' v_s
    [keep, T, F])."""
    prior_mean, prior_logvar = prior

    def log_target(z):
        Vs = decode(z)
        Vx = g[:, None] * Vs + Vn
        log_prior = -0.5 * jnp.sum(jnp.square(z - prior_mean) * jnp.exp(-prior_logvar), axis=-1)
        return -jnp.sum(jnp.log(Vx) + power / Vx, axis=-1) + log_prior, Vs

    def move(carry, key):
        z, log_p, Vs = carry
        key_step, key_accept = jax.random.split(key)
        proposal = z + proposal_std * jax.random.normal(key_step, z.shape)
        log_p_new, Vs_new = log_target(proposal)
        accept = jnp.log(jax.random.uniform(key_accept, log_p.shape)) < log_p_new - log_p
        z = jnp.where(accept[:, None], proposal, z)
        return (z, jnp.where(accept, log_p_new, log_p), jnp.where(accept[:, None], Vs_new, Vs)), None

    def collect(carry, key):
        carry, _ = move(carry, key)
        return carry, carry[2]

    keys = jax.random.split(key, steps)
    carry, _ = jax.lax.scan(move, (z, *log_target(z)), keys[: steps - keep])
    (z, _, _), samples = jax.lax.scan(collect, carry, keys[steps - keep :])
    return z, samples


def _mcem_one(model, variables, settings, X, mask, W, H, g, key):
    power = jnp.square(X.real) + jnp.square(X.imag)

    def decode(z):
        return jnp.exp(model.apply(variables, z, method="decode"))

    z = model.apply(variables, power[None], sample=False)["z_mean"][0]
    return _mcem_core(decode, z, (0.0, 0.0), settings, X, mask, W, H, g, key)


def _mcem_core(decode, z, prior, settings, X, mask, W, H, g, key):
    """MCEM of one utterance from the chain start ``z`` [T, Z], the decoder ``decode(z) -> v_s`` and the prior."""
    power = jnp.square(X.real) + jnp.square(X.imag)
    std = settings.proposal_variance**0.5
    keep = settings.mh_steps - settings.burn_in

    def iteration(carry, key):
        z, W, H, g = carry
        Vn = nmf.noise_variance(W, H)
        z, Vs = _metropolis_hastings(decode, power, Vn, g, z, key, settings.mh_steps, keep, std, prior)
        W, H, g, Vx = nmf.m_step(power, mask, W, H, g, Vs)
        return (z, W, H, g), nmf.is_cost(power, mask, Vx)

    key_loop, key_final = jax.random.split(key)
    keys = jax.random.split(key_loop, settings.num_iterations)
    (z, W, H, g), loss = jax.lax.scan(iteration, (z, W, H, g), keys)
    Vn = nmf.noise_variance(W, H)
    steps = settings.wiener_burn_in + settings.wiener_samples
    _, Vs = _metropolis_hastings(decode, power, Vn, g, z, key_final, steps, settings.wiener_samples, std, prior)
    gain = jnp.mean(nmf.wiener_gain(g[:, None] * Vs, Vn), axis=0) * mask[:, None]
    return dict(S_hat=gain * X, Vs=jnp.mean(Vs, axis=0), Vn=Vn, W=W, H=H, g=g, loss=loss)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _mcem_batched(model, variables, settings, X, mask, W, H, g, keys):
    return jax.vmap(functools.partial(_mcem_one, model, variables, settings))(X, mask, W, H, g, keys)


def mcem(model, variables, X, mask, *, settings: MCEMSettings = MCEMSettings(), key) -> dict:
    """Enhances a batch with a VAE prior: X complex [B, T, F], mask bool [B, T] -> dict of ``S_hat``
    complex64 [B, T, F] (0 on padded frames), ``Vs`` (mean of the Wiener samples' speech variance),
    ``Vn``, ``W``, ``H``, ``g`` and ``loss`` [B, num_iterations] (mean IS cost over the E-step's samples
    after each M-step). NMF start: :func:`nmf.init_nmf` from ``key``."""
    if not isinstance(model, VAE):
        raise ValueError(f"mcem: the prior must be a frame-wise VAE (got {type(model).__name__}); use vem for DVAEs")
    X = noisy_stft(X, model, "mcem")
    if tuple(jnp.shape(mask)) != X.shape[:2]:
        raise ValueError(f"mcem: mask has shape {tuple(jnp.shape(mask))}; expected {X.shape[:2]}")
    batch, frames, bins = X.shape
    key_init, key_run = jax.random.split(key)
    W, H, g = nmf.init_nmf(key_init, batch, frames, settings.nmf_rank, bins)
    keys = jax.random.split(key_run, batch)
    return _mcem_batched(model, variables, settings, X, jnp.asarray(mask, bool), W, H, g, keys)


def _mcem_av_one(model, variables, settings, X, mask, lips, W, H, g, key):
    power = jnp.square(X.real) + jnp.square(X.imag)

    def decode(z):
        return jnp.exp(model.apply(variables, z, lips, method="decode"))

    prior = model.apply(variables, lips, method="prior")
    z = model.apply(variables, power, lips, method="encode")[0]  # the chain starts at q(z | x, v)'s mean
    return _mcem_core(decode, z, prior, settings, X, mask, W, H, g, key)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _mcem_av_batched(model, variables, settings, X, mask, lips, W, H, g, keys):
    return jax.vmap(functools.partial(_mcem_av_one, model, variables, settings))(X, mask, lips, W, H, g, keys)


def mcem_av(model, variables, X, mask, lips, *, settings: MCEMSettings = MCEMSettings(), key) -> dict:
    """:func:`mcem` with an AV-CVAE (``av_cvae.AVCVAE``): the decoder and the prior of z read each frame's lip
    image ``lips`` [B, T, P] (the video frame beside every STFT frame), the prior is the visual one."""
    X = noisy_stft(X, model, "mcem_av")
    if tuple(jnp.shape(mask)) != X.shape[:2]:
        raise ValueError(f"mcem_av: mask has shape {tuple(jnp.shape(mask))}; expected {X.shape[:2]}")
    if tuple(jnp.shape(lips)) != X.shape[:2] + (model.lip_dim,):
        raise ValueError(f"mcem_av: lips has shape {tuple(jnp.shape(lips))}; expected {X.shape[:2] + (model.lip_dim,)}")
    batch, frames, bins = X.shape
    key_init, key_run = jax.random.split(key)
    W, H, g = nmf.init_nmf(key_init, batch, frames, settings.nmf_rank, bins)
    keys = jax.random.split(key_run, batch)
    lips = jnp.asarray(lips, jnp.float32)
    return _mcem_av_batched(model, variables, settings, X, jnp.asarray(mask, bool), lips, W, H, g, keys)
