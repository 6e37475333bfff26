"""AV-CVAE: a frame-wise speech VAE conditioned on the lip region ([AV-slides], Sadeghi et al.'s AV-CVAE),
for audiovisual speech enhancement with the Monte-Carlo EM of :mod:`mcem`.

Per STFT frame n, with v_n the lip image of the video frame beside it (grey levels, flattened):

* generative model: s_n ~ N_c(0, diag sigma_s(z_n, v_n)), the **visual prior** z_n ~ N(mu^v(v_n), diag sigma^v(v_n));
* inference model: q(z_n | s_n, v_n) = N(mu^av(s_n, v_n), diag sigma^av(s_n, v_n));
* training objective, the slides' **modified ELBO** (to be maximised)
  sum_n (1 - alpha) [E_q log p(s_n | z_n, v_n) - KL(q(z_n | s_n, v_n) || p(z_n | v_n))]
        + alpha E_{p(z_n | v_n)} log p(s_n | z_n, v_n),
  whose second term makes the decoder explain speech from the visual prior's samples alone: without it the
  model can learn to ignore the video (the slides' remark), and at test time, where the speech is noisy, the
  visual prior is what the video brings.

``visual=False`` gives the audio-only counterpart (no lip input, prior N(0, I), alpha unused): the same
network widths and training, the baseline the audiovisual model is compared with.

Sizes are avrep's (the slides give none): a lip embedding of two tanh layers (256, 64), encoder / decoder /
prior of one tanh layer of 128, z of 16 dimensions (the DVAE priors' latent size).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from avrep.nn import gaussian
from avrep.nn.losses import itakura_saito_from_log

SAMPLE_RNG = "sample"


class AVCVAE(nn.Module):
    """``__call__(power [..., F], lips [..., P])`` -> dict of z_mean, z_logvar, prior_mean, prior_logvar, z,
    log_var (decoder on the posterior z) and prior_log_var (decoder on a draw of the visual prior)."""

    x_dim: int = 513
    lip_dim: int = 240
    z_dim: int = 16
    hidden: int = 128
    visual_hidden: tuple[int, ...] = (256, 64)
    visual: bool = True

    def setup(self):
        self.lip_net = [nn.Dense(h, name=f"lip_{i}") for i, h in enumerate(self.visual_hidden)] if self.visual else []
        self.enc_hidden = nn.Dense(self.hidden, name="enc_hidden")
        self.enc_mean, self.enc_logvar = nn.Dense(self.z_dim, name="enc_mean"), nn.Dense(self.z_dim, name="enc_logvar")
        self.dec_hidden = nn.Dense(self.hidden, name="dec_hidden")
        self.dec_out = nn.Dense(self.x_dim, name="dec_log_var")
        if self.visual:
            self.prior_hidden = nn.Dense(self.hidden, name="prior_hidden")
            self.prior_mean_out = nn.Dense(self.z_dim, name="prior_mean")
            self.prior_logvar_out = nn.Dense(self.z_dim, name="prior_logvar")

    def embed(self, lips):
        h = lips
        for layer in self.lip_net:
            h = jnp.tanh(layer(h))
        return h

    def prior(self, lips):
        """(mean, log-variance) of p(z | v) [..., Z]; N(0, I) for the audio-only model."""
        if not self.visual:
            zeros = jnp.zeros(lips.shape[:-1] + (self.z_dim,), jnp.float32)
            return zeros, zeros
        h = jnp.tanh(self.prior_hidden(self.embed(lips)))
        return self.prior_mean_out(h), self.prior_logvar_out(h)

    def _with_video(self, x, lips):
        return jnp.concatenate([x, self.embed(lips)], axis=-1) if self.visual else x

    def encode(self, power, lips):
        """(mean, log-variance) of q(z | s, v), the speech fed as log power."""
        h = jnp.tanh(self.enc_hidden(self._with_video(jnp.log(power + 1e-8), lips)))
        return self.enc_mean(h), self.enc_logvar(h)

    def decode(self, z, lips):
        """log sigma_s(z, v) [..., F]."""
        return self.dec_out(jnp.tanh(self.dec_hidden(self._with_video(z, lips))))

    def __call__(self, power, lips, sample: bool = True):
        z_mean, z_logvar = self.encode(power, lips)
        prior_mean, prior_logvar = self.prior(lips)
        if sample:
            key_q, key_p = jax.random.split(self.make_rng(SAMPLE_RNG))
            z = z_mean + jnp.exp(0.5 * z_logvar) * jax.random.normal(key_q, z_mean.shape)
            z_prior = prior_mean + jnp.exp(0.5 * prior_logvar) * jax.random.normal(key_p, prior_mean.shape)
        else:
            z, z_prior = z_mean, prior_mean
        return dict(
            z_mean=z_mean,
            z_logvar=z_logvar,
            prior_mean=prior_mean,
            prior_logvar=prior_logvar,
            z=z,
            log_var=self.decode(z, lips),
            prior_log_var=self.decode(z_prior, lips),
        )


def modified_elbo_loss(out: dict, power, alpha: float) -> tuple[jax.Array, dict]:
    """The negative modified ELBO per frame (power [..., F], every frame real): (1 - alpha)(IS + KL) + alpha IS
    under the visual prior's draw, IS the Itakura-Saito divergence summed over bins (the complex Gaussian
    likelihood up to a constant). For the audio-only model (prior N(0, I)) pass alpha 0: the plain ELBO."""
    recon = itakura_saito_from_log(power, out["log_var"], reduce="sum_bins")
    kl = jnp.mean(gaussian.kl_divergence(out["z_mean"], out["z_logvar"], out["prior_mean"], out["prior_logvar"]))
    visual = itakura_saito_from_log(power, out["prior_log_var"], reduce="sum_bins")
    loss = (1.0 - alpha) * (recon + kl) + alpha * visual
    return loss, dict(recon=recon, kl=kl, visual_recon=visual)


@dataclasses.dataclass(frozen=True)
class CVAETrainSettings:
    """Adam on random windows of clean speech with its lip images. alpha 0.5 (the slides require alpha > 0 and
    give no value): at 0.5 the decoder is trained as much on draws of the visual prior as on the posterior, so
    p(z | v) must carry what the lips say about the spectrum; a small alpha lets the prior stay near N(0, I)
    while the posterior does the work (the video then barely matters at test time), and alpha near 1 leaves
    the audio posterior, and so the speech detail the lips cannot show, untrained."""

    num_steps: int = 1500
    batch_size: int = 32
    frames: int = 50
    learning_rate: float = 1e-3
    alpha: float = 0.5

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CVAETrainSettings.{name}={value!r}: expected a positive int")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"CVAETrainSettings.alpha={self.alpha!r}: expected 0 <= alpha < 1")


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _train_step(model, opt, alpha, params, opt_state, power, lips, key):
    def loss_fn(params):
        out = model.apply({"params": params}, power, lips, rngs={SAMPLE_RNG: key})
        return modified_elbo_loss(out, power, alpha)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(parts, loss=loss)


def train_cvae(model: AVCVAE, windows, *, settings: CVAETrainSettings = CVAETrainSettings(), key) -> tuple[dict, dict]:
    """Trains ``model`` on ``windows(step) -> (power [B, T, F], lips [B, T, P])`` of clean speech; returns
    (variables, the loss terms at every step as arrays). The audio-only model (``visual=False``) is trained with
    alpha 0, the plain ELBO."""
    alpha = settings.alpha if model.visual else 0.0
    power, lips = windows(0)
    key_init, key_run = jax.random.split(key)
    params = model.init({"params": key_init, SAMPLE_RNG: key_init}, jnp.asarray(power), jnp.asarray(lips))["params"]
    opt = optax.adam(settings.learning_rate)
    opt_state = opt.init(params)
    history = []
    for step in range(settings.num_steps):
        power, lips = windows(step)
        if power.shape[-1] != model.x_dim or lips.shape[-1] != model.lip_dim or power.shape[:-1] != lips.shape[:-1]:
            raise ValueError(
                f"train_cvae: windows gave power {power.shape} and lips {lips.shape}; expected [B, T, {model.x_dim}] "
                f"and [B, T, {model.lip_dim}]"
            )
        params, opt_state, parts = _train_step(
            model,
            opt,
            alpha,
            params,
            opt_state,
            jnp.asarray(power),
            jnp.asarray(lips),
            jax.random.fold_in(key_run, step),
        )
        history.append(parts)
    history = jax.device_get(history)
    return {"params": params}, {k: np.asarray([h[k] for h in history]) for k in history[0]}
