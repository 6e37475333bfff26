"""The dynamical VAEs of Xiaoyu Lin's thesis and the DVAE review: VAE, DKF, STORN, VRNN, SRNN, RVAE, DSAE
(and MixDVAE's pre-trained SRNNs).

Sources (keys: docs/REFERENCES.md): [DVAE-review] (the models), [Lin-thesis] Ch. 2 and 5–7 (the
speech setting: power spectrograms, Itakura–Saito likelihood, SRNN / RVAE), and the authors' released
code and weights: the DVAE benchmark ([code-dvae], branch ``interspeech``, 257 bins) and DVAE_SE
([code-dvae-se], 513 bins), whose numbers avrep reproduces (``tests/test_dvae.py``, parity section).

**Parameters mirror the authors' module trees,** name for name, so that
``avrep.convert.dvae`` maps a torch ``state_dict`` onto a model by name alone: ``mlp_x_h/linear0``,
``rnn_h/{weight_ih,weight_hh,bias_ih,bias_hh}`` (torch's ``*_l0``, ``*_l0_reverse`` ->
``*_reverse``), ``gen_logvar``, ...; a Dense ``kernel`` is torch's ``weight`` transposed. Layer lists
are tuples of widths (``()`` = torch's ``nn.Identity``); the LSTMs are single layers (every released
config). Dropout (p = 0 in every released config) is left out.

**Common API** (the training task, evaluation and speech enhancement rely on it):

* input: power spectrogram ``x`` [B, T, F] (batch-major, linear power, no log);
* ``model.apply(variables, x, sample=True, eps=None, rngs={"sample": key})`` -> dict with
  ``log_var`` [B, T, F] (log-variance of the speech power; teacher-forced, i.e. the past frames are
  the data, for the autoregressive STORN / VRNN / SRNN), ``z`` (a posterior sample, the posterior
  mean if ``sample=False``), ``z_mean``, ``z_logvar``, ``prior_mean``, ``prior_logvar`` [B, T, Z]
  (zeros for a standard-normal prior); DSAE adds ``v``, ``v_mean``, ``v_logvar``, ``v_prior_mean``,
  ``v_prior_logvar`` [B, V]; SRNN / VRNN add their deterministic states ``h`` (SRNN_ss also ``h_gen``).
  ``eps`` [B, T, Z], if given, is the reparameterisation noise (DSAE: also ``eps_v`` [B, V]);
  otherwise it is drawn from the ``"sample"`` stream (``sample=True``) or the means are used.
  SRNN also takes ``use_pred`` (scheduled sampling, see :class:`SRNN`).
* ``model.apply(variables, batch, num_frames, method="generate", rngs={"sample": key})`` samples from
  the learned prior (feeding back the model's own samples of the speech power where it is
  autoregressive; ``feedback="variance"`` feeds back exp(log_var)) and returns ``log_var``
  [batch, num_frames, F]; ``return_all=True`` returns a dict with ``log_var``, ``z`` (and ``x``, the
  fed-back frames, ``v`` for DSAE).
* :func:`dvae_loss` ``(outputs, x, *, beta, likelihood="itakura_saito") -> (loss, metrics)``:
  Itakura–Saito (``likelihood="gaussian"``: the real Gaussian NLL) + beta · KL per frame.

MixDVAE's SRNNs ([MixDVAE]; presets ``mixdvae/MOT``, ``mixdvae/SCASS``) are :class:`SRNN` fields:
``inference="causal"`` (the encoder reads [h_t, x_t, z_{t-1}], no backward RNN), ``output="gaussian"``
(the MOT model: a real Gaussian on 4-d boxes; the outputs add its ``mean`` [B, T, x_dim] beside
``log_var``, ``__call__`` takes ``eps_x`` [B, T, x_dim], the noise of the fed-back sample, and the loss
is ``dvae_loss(..., likelihood="gaussian")``), ``naming="mixdvae"`` (their parameter names).

Checks: a field of the wrong kind raises a TypeError naming ``Model.field``; ``x`` must be
[B, T, x_dim] with B, T >= 1 and, when concrete, NaN-free (ValueError naming the model). Every
recurrence is a ``lax.scan``; the first layers and the decoders that do not depend on the
recurrence run on all frames at once.

``PRESETS``: the authors' configurations, ``{"dvae/<model>": ..., "dvae_se/<model>": ...,
"mixdvae/<MOT|SCASS>": ..., "sf_vae/VAE": ...}`` (the last: the IS-VAE of the source-filter VAE, [SF-VAE]), each a
dict ``{"model": class name, **fields}`` (see :func:`build_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from avrep.models.config import module_from_config
from avrep.models.dvae.autoregressive import SRNN, STORN, VRNN
from avrep.models.dvae.base import LIKELIHOODS, DVAEBase, LinearStack, dvae_loss
from avrep.models.dvae.non_autoregressive import DKF, DSAE, RVAE, VAE

MODELS = {m.__name__: m for m in (VAE, DKF, STORN, VRNN, SRNN, RVAE, DSAE)}

# The DVAE benchmark's released WSJ0 models (branch ``interspeech``, 257 bins: n_fft 512, hop 256, sine
# window), from their config.ini files. DSAE has no released weights; its sizes are those of the
# benchmark's config/speech/cfg_dsae.ini with the family's 257 bins.
_DVAE = dict(x_dim=257, z_dim=16, activation="tanh")
# DVAE_SE's released models (WSJ0 and VoiceBank, 513 bins: n_fft 1024, hop 256, sine window); the
# vb_* and wsj_* configs are the same architecture. Its SRNN weights belong to the scheduled-sampling
# class SRNN_ss.
_DVAE_SE = dict(x_dim=513, z_dim=16, activation="tanh")
_RVAE = dict(
    dense_x_gx=(256,),
    dim_rnn_g_x=128,
    dense_z_gz=(32, 64),
    dim_rnn_g_z=128,
    dense_g_z=(64, 32),
    dense_z_h=(32, 64),
    dim_rnn_h=128,
    dense_h_x=(256,),
)
_SRNN = dict(
    dense_x_h=(256,),
    dim_rnn_h=128,
    dense_hx_g=(256,),
    dim_rnn_g=128,
    dense_gz_z=(64, 32),
    dense_hz_x=(256,),
    dense_hz_z=(64, 32),
)
PRESETS: dict[str, dict[str, Any]] = {
    "dvae/VAE": dict(model="VAE", **_DVAE, dense_x_z=(256, 128, 64, 32)),
    "dvae/DKF": dict(
        model="DKF",
        **_DVAE,
        dense_x_gx=(256,),
        dim_rnn_gx=128,
        bidir_gx=False,
        dense_ztm1_g=(32, 64),
        dense_g_z=(64, 32),
        dense_z_x=(32, 64, 128, 256),
    ),
    "dvae/STORN": dict(
        model="STORN",
        **_DVAE,
        dense_x_g=(256,),
        dim_rnn_g=128,
        dense_g_z=(64, 32),
        dense_z_h=(32, 64),
        dense_xtm1_h=(256,),
        dim_rnn_h=128,
        dense_h_x=(256,),
    ),
    "dvae/VRNN": dict(
        model="VRNN",
        **_DVAE,
        dense_x=(256,),
        dense_z=(32, 64),
        dense_hx_z=(64, 32),
        dense_hz_x=(256,),
        dense_h_z=(64, 32),
        dim_rnn=128,
    ),
    "dvae/SRNN": dict(model="SRNN", **_DVAE, **_SRNN),
    "dvae/RVAE-Causal": dict(model="RVAE", **_DVAE, causal=True, **_RVAE),
    "dvae/RVAE-NonCausal": dict(model="RVAE", **_DVAE, causal=False, **_RVAE),
    "dvae/DSAE": dict(
        model="DSAE",
        **_DVAE,
        v_dim=16,
        dense_x=(),
        dim_rnn_gv=128,
        dense_gv_v=(),
        dense_xv_gxv=(),
        dim_rnn_gxv=128,
        dense_gxv_gz=(),
        dim_rnn_gz=128,
        dim_rnn_prior=128,
        dense_vz_x=(32, 64, 128, 256),
    ),
    "dvae_se/VAE": dict(model="VAE", **_DVAE_SE, dense_x_z=(128,)),
    "dvae_se/DKF": dict(
        model="DKF",
        **_DVAE_SE,
        dense_x_gx=(256,),
        dim_rnn_gx=128,
        bidir_gx=False,
        dense_ztm1_g=(32,),
        dense_g_z=(32,),
        dense_z_x=(32, 64, 128, 256),
    ),
    "dvae_se/RVAE": dict(
        model="RVAE",
        **_DVAE_SE,
        causal=False,
        dense_x_gx=(),
        dim_rnn_g_x=128,
        dense_z_gz=(),
        dim_rnn_g_z=128,
        dense_g_z=(),
        dense_z_h=(),
        dim_rnn_h=128,
        dense_h_x=(),
    ),
    "dvae_se/SRNN": dict(model="SRNN", **_DVAE_SE, **_SRNN, scheduled_sampling=True),
    # MixDVAE's pre-trained SRNNs (config/cfg_dvae_single_*.ini; [Lin-thesis] App. A.1.2), with MixDVAE's
    # parameter names and its scheduled-sampling decoder. MOT: 4-d boxes, a real Gaussian output and causal
    # inference sharing h_t (no backward RNN). SC-ASS (the WSJ0 and CBF weights): DVAE_SE's SRNN_ss sizes.
    "mixdvae/MOT": dict(
        model="SRNN",
        x_dim=4,
        z_dim=4,
        activation="tanh",
        dense_x_h=(4,),
        dim_rnn_h=8,
        dense_gz_z=(16, 8),
        dense_hz_x=(16,),
        dense_hz_z=(8, 8),
        scheduled_sampling=True,
        inference="causal",
        output="gaussian",
        naming="mixdvae",
    ),
    "mixdvae/SCASS": dict(model="SRNN", **_DVAE_SE, **_SRNN, scheduled_sampling=True, naming="mixdvae"),
    # The source-filter VAE's IS-VAE ([SF-VAE]; [Sadok-thesis] App. A.1): 513 -> 256 -> 64 -> 2 x 16, the decoder
    # mirrored, tanh, the variance through exp (= gen_logvar). Its released WSJ0 weights name the layers
    # fc1 ... fc6; avrep.convert.dvae renames them. Front end: periodic Hann 1024, hop 256, reflect padding.
    "sf_vae/VAE": dict(model="VAE", x_dim=513, z_dim=16, activation="tanh", dense_x_z=(256, 64)),
}


def build_model(config: str | Mapping[str, Any]) -> DVAEBase:
    """A model from a preset name (a key of ``PRESETS``) or a dict ``{"model": class name, **fields}``."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown DVAE preset {config!r}; expected one of {sorted(PRESETS)}")
        config = PRESETS[config]
    fields = dict(config)
    name = fields.pop("model", None)
    if name not in MODELS:
        raise ValueError(f"DVAE config: model={name!r}; expected one of {sorted(MODELS)}")
    return module_from_config(MODELS[name], fields, f"DVAE config ({name})")


__all__ = [
    "DKF",
    "DSAE",
    "DVAEBase",
    "LIKELIHOODS",
    "LinearStack",
    "MODELS",
    "PRESETS",
    "RVAE",
    "SRNN",
    "STORN",
    "VAE",
    "VRNN",
    "build_model",
    "dvae_loss",
]
