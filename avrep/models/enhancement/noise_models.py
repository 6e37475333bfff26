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

Configurations ([Lin-thesis] Sec. 6.3):

* **U-NA** (:func:`una`): the objective optimised on each test utterance alone, from a fresh noise network,
  batched with ``vmap``;
* **U-ND** (:func:`train_und`, then :func:`und`): the noise network and the speech encoder trained by SGD on
  noisy speech only (no clean references), over random windows of many utterances; at test time one
  forward pass, one compiled call for a batch of utterances;
* **U-NDA** (:func:`una` with ``start``): U-ND's networks as the start of the per-utterance optimisation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from avrep.models.dvae.base import dense, shift_right
from avrep.models.enhancement import nmf
from avrep.models.enhancement.priors import (
    broadcast_tree,
    noisy_stft,
    per_utterance_encoders,
    speech_model,
    split_params,
)
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


@dataclasses.dataclass(frozen=True)
class UNDSettings:
    """U-ND training: the thesis's Adam (beta2 0.99, eps 1e-9) with the learning rate cosine-annealed from
    5e-4 to 1e-8 (Sec. 6.4, as its RVAE pre-training) over ``num_steps`` steps of ``batch_size`` random
    windows of ``frames`` noisy frames (the thesis: at most 500 epochs, the best on validation; a CPU budget
    here). The noise network's kind and widths are ``noise``'s (a :class:`NoiseModelSettings`)."""

    noise: NoiseModelSettings = NoiseModelSettings()
    num_steps: int = 2000
    batch_size: int = 16
    frames: int = 100
    learning_rate: float = 5e-4
    final_learning_rate: float = 1e-8

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNDSettings.{name}={value!r}: expected a positive int")
        if not self.learning_rate > self.final_learning_rate > 0:
            raise ValueError(
                f"UNDSettings: learning_rate={self.learning_rate!r}, final_learning_rate={self.final_learning_rate!r}; "
                "expected learning_rate > final_learning_rate > 0"
            )

    def optimizer(self) -> optax.GradientTransformation:
        schedule = optax.cosine_decay_schedule(
            self.learning_rate, self.num_steps, alpha=self.final_learning_rate / self.learning_rate
        )
        n = self.noise
        return optax.adam(schedule, b1=n.adam_b1, b2=n.adam_b2, eps=n.adam_eps)


def _variances(model, variables, network, frozen, trainable, power, *, sample, key):
    """(v_s, v_n, KL per frame) of one utterance, power [T, F]."""
    Vs, kl, z = speech_model(model, variables, power, trainable["encoder"], frozen, sample=sample, key=key)
    log_vn = network.apply({"params": trainable["noise"]}, z[:, None], power[:, None])[:, 0]
    return Vs, jnp.exp(log_vn), kl


def _objective(model, variables, network, frozen, trainable, power, mask, *, sample, key):
    """Eq. 6.16 of one utterance, summed over its real frames: IS-form cost of |x|² under v_s + v_n plus KL."""
    Vs, Vn, kl = _variances(model, variables, network, frozen, trainable, power, sample=sample, key=key)
    Vx = Vs + Vn
    m = mask.astype(power.dtype)
    return jnp.sum(m[:, None] * (power / Vx + jnp.log(Vx))) + jnp.sum(m * kl)


def _wiener(model, variables, network, frozen, trainable, X, mask) -> dict:
    """The estimate of one utterance from the posterior mean of z (eq. 6.13)."""
    power = jnp.square(X.real) + jnp.square(X.imag)
    Vs, Vn, _ = _variances(model, variables, network, frozen, trainable, power, sample=False, key=None)
    return dict(S_hat=nmf.wiener_gain(Vs, Vn) * mask[:, None] * X, Vs=Vs, Vn=Vn)


def _una_one(model, variables, settings, frozen, encoder, noise, X, mask, key):
    power = jnp.square(X.real) + jnp.square(X.imag)
    network, opt = settings.network(model), settings.optimizer()
    m = mask.astype(power.dtype)

    def cost(trainable, key):
        return _objective(model, variables, network, frozen, trainable, power, mask, sample=settings.sample, key=key)

    def iteration(carry, key):
        trainable, opt_state = carry
        value, grads = jax.value_and_grad(cost)(trainable, key)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return (optax.apply_updates(trainable, updates), opt_state), value / jnp.sum(m)

    trainable = dict(encoder=encoder, noise=noise)
    keys = jax.random.split(key, settings.num_iterations)
    (trainable, _), loss = jax.lax.scan(iteration, (trainable, opt.init(trainable)), keys)
    return dict(_wiener(model, variables, network, frozen, trainable, X, mask), loss=loss)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _una_batched(model, variables, settings, frozen, encoder, noise, X, mask, keys):
    one = functools.partial(_una_one, model, variables, settings, frozen)
    return jax.vmap(one)(encoder, noise, X, mask, keys)


def _check_batch(X, mask, model, where: str):
    X = noisy_stft(X, model, where)
    if tuple(jnp.shape(mask)) != X.shape[:2]:
        raise ValueError(f"{where}: mask has shape {tuple(jnp.shape(mask))}; expected {X.shape[:2]}")
    return X, jnp.asarray(mask, bool)


def init_noise_network(model, settings: NoiseModelSettings, key) -> dict:
    """The noise network's parameters (shapes do not depend on the number of frames)."""
    dummy_z, dummy_x = jnp.zeros((2, 1, model.z_dim)), jnp.zeros((2, 1, model.x_dim))
    return settings.network(model).init({"params": key}, dummy_z, dummy_x)["params"]


def una(
    model,
    variables,
    X,
    mask,
    *,
    settings: NoiseModelSettings = NoiseModelSettings(),
    key,
    start: dict | None = None,
) -> dict:
    """U-NA: per-utterance optimisation of eq. 6.16 (encoder + a fresh noise network per utterance, drawn
    from ``key``), batched. X complex [B, T, F], mask bool [B, T] -> dict of ``S_hat`` complex64
    [B, T, F] (0 on padded frames), ``Vs``, ``Vn`` [B, T, F], ``loss`` [B, num_iterations] (the
    objective per real frame before each update). U-NDA: ``start`` = :func:`train_und`'s ``{"encoder",
    "noise"}``, every utterance's optimisation starting from them (``settings`` must describe the same
    noise network)."""
    X, mask = _check_batch(X, mask, model, "una")
    batch = X.shape[0]
    rest, frozen, encoders = per_utterance_encoders(model, variables, batch)
    key_init, key_run = jax.random.split(key)
    if start is None:
        noise = jax.vmap(lambda k: init_noise_network(model, settings, k))(jax.random.split(key_init, batch))
    else:
        encoders, noise = broadcast_tree(start["encoder"], batch), broadcast_tree(start["noise"], batch)
    return _una_batched(model, rest, settings, frozen, encoders, noise, X, mask, jax.random.split(key_run, batch))


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _und_step(model, variables, settings, opt, frozen, trainable, opt_state, power, mask, key):
    network = settings.network(model)

    def cost(trainable):
        keys = jax.random.split(key, power.shape[0])

        def one(p, m, k):
            return _objective(model, variables, network, frozen, trainable, p, m, sample=settings.sample, key=k)

        return jnp.sum(jax.vmap(one)(power, mask, keys)) / jnp.sum(mask)

    value, grads = jax.value_and_grad(cost)(trainable)
    updates, opt_state = opt.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, value


def train_und(model, variables, windows, *, settings: UNDSettings = UNDSettings(), key) -> tuple[dict, np.ndarray]:
    """U-ND training: the speech encoder (from the prior's) and a fresh noise network fitted to noisy speech
    alone, the decoder frozen. ``windows(step) -> (power [B, T, F], mask [B, T])`` gives each step's batch of
    noisy power windows (``settings.batch_size`` x ``settings.frames``). Returns (``{"encoder", "noise"}``,
    the objective per real frame at every step)."""
    encoder, frozen = split_params(model, variables["params"])
    rest = {k: v for k, v in variables.items() if k != "params"}
    key_init, key_run = jax.random.split(key)
    trainable = dict(encoder=encoder, noise=init_noise_network(model, settings.noise, key_init))
    opt = settings.optimizer()
    opt_state = opt.init(trainable)
    losses = []
    for step in range(settings.num_steps):
        power, mask = windows(step)
        power = jnp.asarray(power, jnp.float32)
        if power.ndim != 3 or power.shape[-1] != model.x_dim:
            raise ValueError(f"train_und: windows gave power of shape {power.shape}; expected [B, T, {model.x_dim}]")
        trainable, opt_state, value = _und_step(
            model,
            rest,
            settings.noise,
            opt,
            frozen,
            trainable,
            opt_state,
            power,
            jnp.asarray(mask, bool),
            jax.random.fold_in(key_run, step),
        )
        losses.append(value)
    return trainable, np.asarray(jax.device_get(losses))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _und_batched(model, variables, settings, frozen, trainable, X, mask):
    one = functools.partial(_wiener, model, variables, settings.network(model), frozen, trainable)
    return jax.vmap(one)(X, mask)


def und(model, variables, trained: dict, X, mask, *, settings: NoiseModelSettings = NoiseModelSettings()) -> dict:
    """U-ND at test time: one forward pass of :func:`train_und`'s networks (``trained``) over a batch, one
    compiled call. X complex [B, T, F], mask bool [B, T] -> dict of ``S_hat`` (0 on padded frames), ``Vs``,
    ``Vn`` [B, T, F]."""
    X, mask = _check_batch(X, mask, model, "und")
    rest = {k: v for k, v in variables.items() if k != "params"}
    _, frozen = split_params(model, variables["params"])
    return _und_batched(model, rest, settings, frozen, trained, X, mask)
