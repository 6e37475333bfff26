"""A DVAE-family speech prior as the enhancement algorithms use it: which parameters form its encoder (the
part fine-tuned on the noisy input; the decoder stays frozen), and one call giving, for a power
spectrogram, the speech variance and the posterior / prior of z that the KL needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avrep.models.dvae import DKF, RVAE, SRNN, VAE
from avrep.models.dvae.base import SAMPLE_RNG
from avrep.nn import gaussian

# The inference networks of the priors whose decoder does not read the (here noisy) data: the layers the
# authors' VEM hands to Adam. SRNN's rnn_h / mlp_x_h feed its decoder too, so they stay frozen.
_ENCODERS = {
    VAE: ("mlp_x_z", "inf_mean", "inf_logvar"),
    DKF: ("mlp_x_gx", "rnn_gx", "mlp_ztm1_g", "mlp_g_z", "inf_mean", "inf_logvar"),
    RVAE: ("mlp_x_gx", "rnn_g_x", "mlp_z_gz", "rnn_g_z", "mlp_g_z", "inf_mean", "inf_logvar"),
    SRNN: ("mlp_hx_g", "rnn_g", "mlp_gz_z", "inf_mean", "inf_logvar", "inf_z_mean", "inf_z_logvar"),
}
SUPPORTED = tuple(cls.__name__ for cls in _ENCODERS)


def _check(model) -> None:
    if type(model) not in _ENCODERS:
        raise ValueError(
            f"enhancement: a {type(model).__name__} prior is not supported; expected one of {SUPPORTED} "
            "(STORN / VRNN decoders read past frames of the data, which are noisy here)"
        )
    if isinstance(model, SRNN) and (model.output != "log_var" or not model.scheduled_sampling):
        raise ValueError(
            "enhancement: an SRNN prior needs output='log_var' (a speech-power model) and scheduled_sampling=True "
            "(DVAE_SE's SRNN_ss, which decodes from its own predictions; a teacher-forced decoder reads the noisy data)"
        )


def split_params(model, params: dict) -> tuple[dict, dict]:
    """(encoder, frozen): the model's top-level parameter groups split by role."""
    _check(model)
    names = _ENCODERS[type(model)]
    encoder = {k: v for k, v in params.items() if k in names}
    if not encoder:
        raise ValueError(f"enhancement: no encoder parameters {names} in the {type(model).__name__} variables")
    return encoder, {k: v for k, v in params.items() if k not in names}


def speech_model(model, variables: dict, power, encoder: dict, frozen: dict, *, sample: bool, key=None):
    """One forward on ``power`` [T, F] of one utterance: (speech variance V_s [T, F], KL per frame [T],
    z [T, Z]).

    SRNN with scheduled sampling decodes from its own predictions (``use_pred=1``, DVAE_SE's default
    forward), so V_s depends on the noisy input only through z. ``sample``: reparameterised z (needs
    ``key``) or the posterior mean.
    """
    kwargs = {"use_pred": 1.0} if isinstance(model, SRNN) and model.scheduled_sampling else {}
    rngs = {SAMPLE_RNG: key} if sample else {}
    out = model.apply({**variables, "params": {**frozen, **encoder}}, power[None], sample=sample, rngs=rngs, **kwargs)
    kl = gaussian.kl_divergence(out["z_mean"], out["z_logvar"], out["prior_mean"], out["prior_logvar"])
    return jnp.exp(out["log_var"][0]), kl[0], out["z"][0]


def broadcast_tree(tree, batch: int):
    """Every leaf repeated along a new leading batch axis (one copy per utterance)."""
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (batch,) + jnp.shape(a)), tree)


def per_utterance_encoders(model, variables: dict, batch: int) -> tuple[dict, dict, dict]:
    """(other collections, frozen parameters, encoder parameters with one copy per utterance [batch, ...]):
    what the per-utterance methods fine-tune and what they share."""
    encoder, frozen = split_params(model, variables["params"])
    rest = {k: v for k, v in variables.items() if k != "params"}
    return rest, frozen, broadcast_tree(encoder, batch)


def noisy_stft(X, model, where: str) -> jax.Array:
    """A batch of noisy STFTs as complex64 [B, T, F], F the prior's bins; ``where`` names the caller."""
    X = jnp.asarray(X, jnp.complex64)
    if X.ndim != 3 or X.shape[-1] != model.x_dim:
        raise ValueError(f"{where}: X has shape {X.shape}; expected [batch, frames, {model.x_dim}] (complex STFT)")
    return X
