"""DVAE noise models for unsupervised speech enhancement ([Lin-thesis] Sec. 6.3–6.5, eq. 6.9–6.16): the
noise variance v_n,t is the output of a network of p_t, combined with a frozen DVAE speech decoder.

* ``LV``:   p_t = z_{1:T}, a bidirectional LSTM over the speech latents;
* ``NO``:   p_t = x_{1:t-1}, an LSTM over the past noisy power frames;
* ``NOLV``: both, one LSTM per input, concatenated.

Each is followed by one tanh dense layer (128) and a linear layer to log v_n (F bins); the LSTMs have
128 units ([Lin-thesis] Sec. 6.4; the widths follow the authors' code). The noisy-speech model is
x_t = s_t + n_t, so the objective (eq. 6.16) is
sum_t [d_IS(|x_t|², v_s,t + v_n,t) + KL(q(z_t | ·) || p(z_t | ·))], minimised over the noise network
and the speech encoder, the speech decoder frozen. The estimate is the Wiener filter
v_s / (v_s + v_n) · x (eq. 6.13).

Configurations: **U-NA** (:func:`una`, built here) optimises the objective on each test utterance
from a fresh noise network, batched with ``vmap``; U-ND (one network trained on noisy speech) and
U-NDA (U-ND then per-utterance adaptation) need a training task and are not built yet.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from avrep.models.dvae.base import dense, shift_right
from avrep.models.enhancement import nmf
from avrep.models.enhancement.priors import noisy_stft, per_utterance_encoders, speech_model
from avrep.nn.recurrent import LSTM

KINDS = ("LV", "NO", "NOLV")


class NoiseModel(nn.Module):
    """log v_n [T, B, F] from z [T, B, Z] (LV), the noisy power x [T, B, F] (NO) or both (NOLV)."""

    kind: str = "LV"
    num_bins: int = 513
    z_dim: int = 16
    hidden: int = 128
    dense_hidden: int = 128

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"NoiseModel.kind={self.kind!r}: expected one of {KINDS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, z, power):
        features = []
        if "LV" in self.kind:
            features.append(LSTM(self.z_dim, self.hidden, bidirectional=True, name="rnn_z")(z))
        if "NO" in self.kind:  # x_{1:t-1}: the state before frame t has read the frames up to t-1
            features.append(LSTM(self.num_bins, self.hidden, name="rnn_x")(shift_right(power)))
        h = jnp.tanh(dense(self.dense_hidden, "mlp")(jnp.concatenate(features, axis=-1)))
        return dense(self.num_bins, "log_var")(h)


@dataclasses.dataclass(frozen=True)
class NoiseModelSettings:
    """U-NA settings. Adam with the thesis's beta2 0.99 and eps 1e-9 (Sec. 6.4); the thesis gives no NA
    learning rate (1e-3 here, the VEM's) and runs 1000 (WSJ0-QUT) or 900 (VB-DMD) iterations (Table 6.3).
    ``sample``: reparameterised z during the optimisation (the ELBO's expectation), else the mean; the
    final estimate uses the posterior mean."""

    kind: str = "LV"
    num_iterations: int = 1000
    learning_rate: float = 1e-3
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    adam_eps: float = 1e-9
    hidden: int = 128
    dense_hidden: int = 128
    sample: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"NoiseModelSettings.kind={self.kind!r}: expected one of {KINDS}")
        if not isinstance(self.num_iterations, int) or self.num_iterations < 1:
            raise ValueError(f"NoiseModelSettings.num_iterations={self.num_iterations!r}: expected a positive int")

    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.learning_rate, b1=self.adam_b1, b2=self.adam_b2, eps=self.adam_eps)

    def network(self, model) -> NoiseModel:
        return NoiseModel(self.kind, model.x_dim, model.z_dim, self.hidden, self.dense_hidden)


def _variances(model, variables, network, frozen, trainable, power, *, sample, key):
    """(v_s, v_n, KL per frame) of one utterance, power [T, F]."""
    Vs, kl, z = speech_model(model, variables, power, trainable["encoder"], frozen, sample=sample, key=key)
    log_vn = network.apply({"params": trainable["noise"]}, z[:, None], power[:, None])[:, 0]
    return Vs, jnp.exp(log_vn), kl


def _una_one(model, variables, settings, frozen, encoder, noise, X, mask, key):
    power = jnp.square(X.real) + jnp.square(X.imag)
    network, opt = settings.network(model), settings.optimizer()
    m = mask.astype(power.dtype)

    def cost(trainable, key):
        Vs, Vn, kl = _variances(model, variables, network, frozen, trainable, power, sample=settings.sample, key=key)
        Vx = Vs + Vn
        return jnp.sum(m[:, None] * (power / Vx + jnp.log(Vx))) + jnp.sum(m * kl)

    def iteration(carry, key):
        trainable, opt_state = carry
        value, grads = jax.value_and_grad(cost)(trainable, key)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return (optax.apply_updates(trainable, updates), opt_state), value / jnp.sum(m)

    trainable = dict(encoder=encoder, noise=noise)
    keys = jax.random.split(key, settings.num_iterations)
    (trainable, _), loss = jax.lax.scan(iteration, (trainable, opt.init(trainable)), keys)
    Vs, Vn, _ = _variances(model, variables, network, frozen, trainable, power, sample=False, key=None)
    gain = nmf.wiener_gain(Vs, Vn) * mask[:, None]
    return dict(S_hat=gain * X, Vs=Vs, Vn=Vn, loss=loss)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _una_batched(model, variables, settings, frozen, encoder, noise, X, mask, keys):
    one = functools.partial(_una_one, model, variables, settings, frozen)
    return jax.vmap(one)(encoder, noise, X, mask, keys)


def una(model, variables, X, mask, *, settings: NoiseModelSettings = NoiseModelSettings(), key) -> dict:
    """U-NA: per-utterance optimisation of eq. 6.16 (encoder + a fresh noise network per utterance, drawn
    from ``key``), batched. X complex [B, T, F], mask bool [B, T] -> dict of ``S_hat`` complex64
    [B, T, F] (0 on padded frames), ``Vs``, ``Vn`` [B, T, F], ``loss`` [B, num_iterations] (the
    objective per real frame before each update)."""
    X = noisy_stft(X, model, "una")
    if tuple(jnp.shape(mask)) != X.shape[:2]:
        raise ValueError(f"una: mask has shape {tuple(jnp.shape(mask))}; expected {X.shape[:2]}")
    batch, frames = X.shape[:2]
    rest, frozen, encoders = per_utterance_encoders(model, variables, batch)
    network = settings.network(model)
    key_init, key_run = jax.random.split(key)
    dummy_z, dummy_x = jnp.zeros((frames, 1, model.z_dim)), jnp.zeros((frames, 1, model.x_dim))
    noise = jax.vmap(lambda k: network.init({"params": k}, dummy_z, dummy_x)["params"])(
        jax.random.split(key_init, batch)
    )
    return _una_batched(
        model,
        rest,
        settings,
        frozen,
        encoders,
        noise,
        X,
        jnp.asarray(mask, bool),
        jax.random.split(key_run, batch),
    )
