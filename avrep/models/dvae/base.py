"""What every DVAE-family model shares: named dense stacks, field checks, input checks, noise, the loss.

Layout conventions (see the package doc): models take batch-major power spectrograms [B, T, F] and
compute time-major [T, B, ·] inside, as the authors' code does, so that every recurrence is one
``lax.scan`` over the leading axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from avrep.models.config import check_choice
from avrep.nn import gaussian, losses
from avrep.nn.layers import ACTIVATIONS

SAMPLE_RNG = "sample"
FEEDBACKS = ("sample", "variance")

# PyTorch's nn.Linear weight initialisation, U(±1/sqrt(fan_in)); biases start at zero (torch draws them
# from the same range; the authors' training does not depend on it).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense(features: int, name: str | None = None) -> nn.Dense:
    """A Linear layer: Flax ``kernel`` = torch ``weight`` transposed, ``bias`` unchanged."""
    return nn.Dense(features, kernel_init=TORCH_KERNEL_INIT, name=name)


class LinearStack(nn.Module):
    """The authors' ``nn.Sequential`` of Linear + activation (+ dropout, p = 0 in every released
    config, so left out), with their layer names: ``linear0``, ``linear1``, ... (``sep="_"``:
    MixDVAE's ``linear_0``, ``linear_1``, ...) then, if ``last`` is set, ``linear_last`` (DKF's
    ``mlp_ztm1_g``). Empty ``features`` and no ``last``: the identity (torch's ``nn.Identity``, no
    parameters)."""

    features: tuple[int, ...]
    activation: str = "tanh"
    last: int | None = None
    sep: str = ""

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for i, f in enumerate(self.features):
            x = act(dense(f, f"linear{self.sep}{i}")(x))
        if self.last is not None:
            x = act(dense(self.last, "linear_last")(x))
        return x


def out_dim(in_dim: int, features: tuple[int, ...]) -> int:
    """Width after an :class:`LinearStack` of ``features`` on ``in_dim`` inputs."""
    return features[-1] if features else in_dim


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


_KINDS = {
    "tuple[int, ...]": (
        lambda v: isinstance(v, tuple) and all(_is_int(i) and i > 0 for i in v),
        "a tuple of positive ints (layer widths; () for none)",
    ),
    "tuple[int, ...] | None": (
        lambda v: v is None or (isinstance(v, tuple) and all(_is_int(i) and i > 0 for i in v)),
        "None or a tuple of positive ints (layer widths; () for none)",
    ),
    "int": (lambda v: _is_int(v) and v > 0, "a positive int"),
    "bool": (lambda v: isinstance(v, bool), "a bool"),
    "bool | None": (lambda v: v is None or isinstance(v, bool), "a bool or None"),
    "str": (lambda v: isinstance(v, str), "a str"),
}


def check_fields(module: nn.Module) -> None:
    """TypeError naming ``Model.field`` when a field's value is not of its declared kind (e.g. an int
    where a tuple of layer widths is expected); ValueError for an unknown activation."""
    owner = type(module).__name__
    for f in dataclasses.fields(module):
        kind = _KINDS.get(f.type if isinstance(f.type, str) else "")
        if f.name in ("parent", "name") or kind is None:
            continue
        value = getattr(module, f.name)
        if not kind[0](value):
            raise TypeError(f"{owner}.{f.name}={value!r}: expected {kind[1]}")
    check_choice(module, "activation", ACTIVATIONS)


class DVAEBase(nn.Module):
    """Fields and helpers shared by the DVAE-family models (not a model itself)."""

    x_dim: int = 513
    z_dim: int = 16
    activation: str = "tanh"

    def __post_init__(self):
        check_fields(self)
        super().__post_init__()

    # -- inputs ---------------------------------------------------------------------------------------

    def _check_x(self, x) -> jax.Array:
        """x [B, T, x_dim] with B, T >= 1 and (when concrete) no NaN; returns it time-major [T, B, F]."""
        owner = type(self).__name__
        shape = tuple(jnp.shape(x))
        if len(shape) != 3 or shape[-1] != self.x_dim:
            raise ValueError(f"{owner}: x has shape {shape}; expected [batch, time, x_dim={self.x_dim}] (power)")
        if shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"{owner}: x has shape {shape}; needs at least one sequence of at least one frame")
        if not isinstance(x, jax.core.Tracer) and np.isnan(np.asarray(x)).any():
            raise ValueError(f"{owner}: x contains NaN")
        return jnp.swapaxes(jnp.asarray(x), 0, 1)

    def _noise(
        self, eps, sample: bool, time: int, batch: int, dim: int | None = None, name: str = "eps", dtype=jnp.float32
    ):
        """Time-major reparameterisation noise [T, B, dim]: ``eps`` [B, T, dim] if given, else N(0, I)
        from the "sample" stream if ``sample``, else None (use the means). ``dtype``: the computation dtype
        (``avrep.nn.precision``); draws are made in float32 and rounded, the same under either dtype."""
        dim = self.z_dim if dim is None else dim
        if eps is not None:
            shape = tuple(jnp.shape(eps))
            if shape != (batch, time, dim):
                raise ValueError(f"{type(self).__name__}: {name} has shape {shape}; expected [{batch}, {time}, {dim}]")
            return jnp.swapaxes(jnp.asarray(eps, jnp.float32), 0, 1).astype(dtype)
        if sample:
            return jax.random.normal(self.make_rng(SAMPLE_RNG), (time, batch, dim)).astype(dtype)
        return None

    # -- outputs --------------------------------------------------------------------------------------

    @staticmethod
    def _outputs(log_var, z, z_mean, z_logvar, prior_mean=None, prior_logvar=None, **extra) -> dict:
        """Time-major arrays -> the batch-major output dict (standard-normal prior: zeros)."""
        if prior_mean is None:
            prior_mean = prior_logvar = jnp.zeros_like(z_mean)
        out = dict(
            log_var=log_var,
            z=z,
            z_mean=z_mean,
            z_logvar=z_logvar,
            prior_mean=prior_mean,
            prior_logvar=prior_logvar,
            **extra,
        )
        return {k: jnp.swapaxes(v, 0, 1) for k, v in out.items()}

    def _generated(self, log_var, z, x=None, return_all: bool = False, **extra):
        """``generate``'s return value from time-major arrays."""
        if not return_all:
            return jnp.swapaxes(log_var, 0, 1)
        out = dict(log_var=log_var, z=z, **({} if x is None else {"x": x}))
        out = {k: jnp.swapaxes(v, 0, 1) for k, v in out.items()}
        return dict(out, **extra)

    def _feedback_noise(self, feedback: str, time: int, batch: int):
        """Exp(1) draws [T, B, x_dim] that turn a variance into a sample of the speech power."""
        if feedback not in FEEDBACKS:
            raise ValueError(f"{type(self).__name__}.generate: feedback={feedback!r}: expected one of {FEEDBACKS}")
        if feedback == "variance":
            return jnp.ones((time, batch, self.x_dim))
        return jax.random.exponential(self.make_rng(SAMPLE_RNG), (time, batch, self.x_dim))


def reparameterize(mean, logvar, eps):
    """The posterior sample, or its mean when ``eps`` is None."""
    return mean if eps is None else gaussian.reparameterize(mean, logvar, eps)


def shift_right(xs: jax.Array) -> jax.Array:
    """Time-major [T, ...] -> the previous frames [0, x_1, ..., x_{T-1}] (x_0 = 0)."""
    return jnp.concatenate([jnp.zeros_like(xs[:1]), xs[:-1]], axis=0)


def cat(*xs):
    return jnp.concatenate(xs, axis=-1)


# ------------------------------------------------------------------------------------------- loss ---


LIKELIHOODS = ("itakura_saito", "gaussian")


def dvae_loss(
    outputs: Mapping[str, jax.Array],
    x: jax.Array,
    *,
    beta: float | jax.Array = 1.0,
    eps: float = 1e-10,
    variance_eps: float = 0.0,
    likelihood: str = "itakura_saito",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative ELBO of a DVAE-family model per frame: (loss, metrics).

    ``recon`` = Itakura–Saito divergence d_IS(x | exp(log_var)) summed over frequency (the
    complex-Gaussian negative log-likelihood of the STFT up to a constant), ``kl_z`` = the
    closed-form KL(q(z_t | ·) || p(z_t | ·)) summed over the latent dimensions; both are averaged
    over batch and frames, i.e. summed over everything and divided by B·T, the normalisation of the
    authors' code (DVAE benchmark ``get_loss``; the spec's "both terms are divided by
    seq_len × batch"). This is the per-sequence negative ELBO of the thesis (a sum over t) divided by
    T. loss = recon + beta · kl.

    DSAE's static latent v adds KL(q(v | x) || N(0, I)) / T per sequence (averaged over the batch),
    which keeps the loss the negative ELBO / T; the authors' code divides it by B only (weighting it
    T times more).

    Differences from the authors' numbers, both constants: their KL omits the ``+1`` of the closed
    form (theirs = ours + z_dim / 2 per frame), and ``eps`` (default 1e-10) is added to x inside the
    log (IS of exact-zero bins stays finite; its gradient differs only by eps · exp(-log_var)).
    ``variance_eps`` is added to the variance exp(log_var) (computed in the log domain). ``eps=0``
    gives the DVAE benchmark's IS exactly; ``eps=0, variance_eps=1e-10`` DVAE_SE's ``loss_ISD``.
    Metrics: loss, recon, kl (the weighted-by-beta KL term's value), kl_z and, for DSAE, kl_v
    (per sequence).

    ``likelihood="gaussian"``, for a model with a real Gaussian output (``outputs["mean"]``: SRNN with
    ``output="gaussian"``, MixDVAE's box tracks): ``recon`` = the Gaussian negative log-likelihood
    -log N(x; mean, exp(log_var)) summed over the features (``eps`` unused, ``variance_eps`` as
    above). The authors' MOT ``loss_recon`` is sum(log_var + (x - mean)² / exp(log_var)) / (B·T)
    = 2 · recon - x_dim · log(2π): twice ours (no 1/2) without the constant, so their
    ``loss_recon + beta · KL`` weighs the KL half as much as the negative ELBO does; ``beta / 2``
    here gives their objective divided by 2 (up to constants). ``itakura_saito`` (the default) on
    outputs with a ``mean`` raises a ValueError (the likelihood would silently be the wrong one).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"dvae_loss: likelihood={likelihood!r}: expected one of {LIKELIHOODS}")
    log_var = outputs["log_var"]
    if jnp.shape(x) != jnp.shape(log_var):
        raise ValueError(f"dvae_loss: x has shape {jnp.shape(x)}; expected {jnp.shape(log_var)} (log_var's)")
    if variance_eps:
        log_var = jnp.logaddexp(log_var, jnp.log(variance_eps))
    if likelihood == "gaussian":
        if "mean" not in outputs:
            raise ValueError("dvae_loss: likelihood='gaussian' needs outputs['mean'] (a model with output='gaussian')")
        recon = jnp.mean(gaussian.gaussian_nll(x, outputs["mean"], log_var))
    elif "mean" in outputs:
        raise ValueError(
            "dvae_loss: the outputs have a 'mean' (a real Gaussian output model); pass likelihood='gaussian'"
        )
    else:
        recon = losses.itakura_saito_from_log(x, log_var, eps=eps, reduce="sum_bins")
    kl_z = jnp.mean(
        gaussian.kl_divergence(outputs["z_mean"], outputs["z_logvar"], outputs["prior_mean"], outputs["prior_logvar"])
    )
    metrics = dict(recon=recon, kl_z=kl_z)
    kl = kl_z
    if "v_mean" in outputs:
        kl_v = jnp.mean(
            gaussian.kl_divergence(
                outputs["v_mean"], outputs["v_logvar"], outputs["v_prior_mean"], outputs["v_prior_logvar"]
            )
        )
        metrics["kl_v"] = kl_v
        kl = kl + kl_v / log_var.shape[1]
    loss = recon + beta * kl
    metrics.update(loss=loss, kl=kl)
    return loss, metrics
