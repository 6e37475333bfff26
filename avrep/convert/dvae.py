"""The DVAE family's released PyTorch weights (DVAE benchmark, DVAE_SE, MixDVAE's pre-trained SRNNs) -> avrep
models and variables.

``infer_dvae_config(state_dict, config_ini)`` reads the architecture from the checkpoint's tensor
shapes (which model, layer widths, LSTM sizes and directions) and, when given, the authors'
``config.ini`` ([Network] section; a path, or its values as a dict) for what shapes cannot tell
(the activation, SRNN_ss: a ``tag`` containing "ss", or MixDVAE's [Training] ``schedule_sampling``, which
its SRNNs are taken to have when no config says otherwise); a config value that contradicts the shapes
raises a ValueError naming the key and both values. ``dvae_variables(state_dict, model)`` maps the
tensors by name (``avrep.convert.state_dict``) and checks every one against the model.
``load_dvae(weights, config_ini)`` does both from files. The source-filter VAE's IS-VAE ([code-sfvae]: layers
fc1 ... fc6) is read as the DVAE VAE (:data:`SF_VAE_NAMES`; preset ``sf_vae/VAE``).
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avrep.convert.state_dict import check_against, load_state_dict, torch_to_flax
from avrep.models.dvae import MODELS, build_model

# Modules (always present: recurrent layers and Linears, not MLPs, which may be empty) that identify each
# model in a state_dict, checked in this order.
_SIGNATURES = (
    ({"rnn_gx", "mlp_gate"}, "DKF"),
    ({"rnn_g_v"}, "DSAE"),
    ({"rnn_g_x"}, "RVAE"),
    ({"rnn"}, "VRNN"),
    ({"rnn_h", "prior_z_mean"}, "SRNN"),  # MixDVAE's SRNNs (naming="mixdvae")
    ({"rnn_g", "rnn_h", "prior_mean"}, "SRNN"),
    ({"rnn_g", "rnn_h"}, "STORN"),
)
_SS_TAG = re.compile(r"(^|[-_])ss($|[-_\d])", re.IGNORECASE)
# The source-filter VAE's released IS-VAE ([code-sfvae]) is the DVAE VAE with other layer names.
SF_VAE_NAMES = {
    "fc1": "mlp_x_z.linear0",
    "fc2": "mlp_x_z.linear1",
    "fc31": "inf_mean",
    "fc32": "inf_logvar",
    "fc4": "mlp_z_x.linear0",
    "fc5": "mlp_z_x.linear1",
    "fc6": "gen_logvar",
}


def is_sf_vae(state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` has exactly the source-filter VAE's layers (fc1, fc2, fc31, fc32, fc4, fc5, fc6)."""
    return {k.split(".")[0] for k in state_dict} == set(SF_VAE_NAMES)


def canonical_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the source-filter VAE's layer names replaced by the DVAE VAE's (others unchanged)."""
    if not is_sf_vae(state_dict):
        return dict(state_dict)
    return {SF_VAE_NAMES[k.split(".")[0]] + k[k.index(".") :]: v for k, v in state_dict.items()}


def read_config_ini(path: str | os.PathLike) -> dict[str, str]:
    """The [Network] section of an authors' ``config.ini`` (plus ``beta`` and ``schedule_sampling`` from
    [Training], if any)."""
    parser = configparser.ConfigParser()
    if not parser.read(os.fspath(path)):
        raise FileNotFoundError(f"{path}: cannot read the config.ini")
    if not parser.has_section("Network"):
        raise ValueError(f"{path}: no [Network] section")
    values = dict(parser["Network"])
    for key in ("beta", "schedule_sampling"):  # schedule_sampling: MixDVAE's SRNN_ss switch
        if parser.has_option("Training", key):
            values.setdefault(key, parser.get("Training", key))
    return values


def _model_name(sd: Mapping[str, Any]) -> str:
    modules = {k.split(".")[0] for k in sd}
    for signature, name in _SIGNATURES:
        if signature <= modules:
            return name
    if "gen_logvar" in modules and "inf_mean" in modules:
        return "VAE"
    raise ValueError(f"state_dict: not a DVAE-family model (top-level modules {sorted(modules)})")


def _shape(sd, key) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"state_dict: missing tensor {key}")
    return tuple(np.shape(sd[key]))


def _dense(sd, module: str, sep: str = "") -> tuple[int, ...]:
    """Widths of ``module.linear0``, ``module.linear1``, ... (MixDVAE, ``sep="_"``: ``linear_0``, ...; () if it
    has none: nn.Identity)."""
    widths = []
    while f"{module}.linear{sep}{len(widths)}.weight" in sd:
        widths.append(_shape(sd, f"{module}.linear{sep}{len(widths)}.weight")[0])
    return tuple(widths)


def _mixdvae_srnn(sd) -> dict[str, Any]:
    """MixDVAE's SRNN: its parameter names, causal inference when it has no ``rnn_g``, a Gaussian output when it
    has ``gen_x_mean``."""
    gaussian = "gen_x_mean.weight" in sd
    f: dict[str, Any] = dict(
        x_dim=_shape(sd, "gen_x_mean.weight" if gaussian else "gen_x.weight")[0],
        z_dim=_shape(sd, "inf_z_mean.weight")[0],
        dense_x_h=_dense(sd, "mlp_x_h", "_"),
        dim_rnn_h=_rnn(sd, "rnn_h")[0],
    )
    if "rnn_g.weight_hh_l0" in sd:
        f.update(dense_hx_g=_dense(sd, "mlp_hx_g", "_"), dim_rnn_g=_rnn(sd, "rnn_g")[0])
    else:
        f["inference"] = "causal"
    f.update(
        dense_gz_z=_dense(sd, "mlp_gz_z", "_"),
        dense_hz_x=_dense(sd, "mlp_hz_x", "_"),
        dense_hz_z=_dense(sd, "mlp_hz_z", "_"),
        scheduled_sampling=True,  # the released configs' [Training] schedule_sampling = True
    )
    if gaussian:
        f["output"] = "gaussian"
    f["naming"] = "mixdvae"
    return f


def _rnn(sd, module: str) -> tuple[int, bool]:
    """(hidden size, bidirectional) of a one-layer torch RNN ``module``."""
    if f"{module}.weight_ih_l1" in sd:
        raise ValueError(f"state_dict: {module} has several layers; avrep's DVAE models use one (num_rnn = 1)")
    return _shape(sd, f"{module}.weight_hh_l0")[1], f"{module}.weight_ih_l0_reverse" in sd


def _from_shapes(sd, name: str) -> dict[str, Any]:
    if name == "SRNN" and "prior_z_mean.weight" in sd:
        return _mixdvae_srnn(sd)
    f: dict[str, Any] = dict(x_dim=_shape(sd, "gen_logvar.weight")[0])
    if name == "VAE":
        f.update(z_dim=_shape(sd, "inf_mean.weight")[0], dense_x_z=_dense(sd, "mlp_x_z"))
        dec = _dense(sd, "mlp_z_x")
        f["dense_z_x"] = None if dec == tuple(reversed(f["dense_x_z"])) else dec
    elif name == "DKF":
        hidden, bidir = _rnn(sd, "rnn_gx")
        f.update(
            z_dim=_shape(sd, "inf_mean.weight")[0],
            dense_x_gx=_dense(sd, "mlp_x_gx"),
            dim_rnn_gx=hidden,
            bidir_gx=bidir,
            dense_ztm1_g=_dense(sd, "mlp_ztm1_g"),
            dense_g_z=_dense(sd, "mlp_g_z"),
            dense_z_x=_dense(sd, "mlp_z_x"),
        )
    elif name == "STORN":
        f.update(
            z_dim=_shape(sd, "inf_mean.weight")[0],
            dense_x_g=_dense(sd, "mlp_x_g"),
            dim_rnn_g=_rnn(sd, "rnn_g")[0],
            dense_g_z=_dense(sd, "mlp_g_z"),
            dense_z_h=_dense(sd, "mlp_z_h"),
            dense_xtm1_h=_dense(sd, "mlp_xtm1_h"),
            dim_rnn_h=_rnn(sd, "rnn_h")[0],
            dense_h_x=_dense(sd, "mlp_h_x"),
        )
    elif name == "VRNN":
        f.update(
            z_dim=_shape(sd, "inf_mean.weight")[0],
            dense_x=_dense(sd, "feature_extractor_x"),
            dense_z=_dense(sd, "feature_extractor_z"),
            dense_hx_z=_dense(sd, "mlp_hx_z"),
            dense_hz_x=_dense(sd, "mlp_hz_x"),
            dense_h_z=_dense(sd, "mlp_h_z"),
            dim_rnn=_rnn(sd, "rnn")[0],
        )
    elif name == "SRNN":
        f.update(
            z_dim=_shape(sd, "inf_mean.weight")[0],
            dense_x_h=_dense(sd, "mlp_x_h"),
            dim_rnn_h=_rnn(sd, "rnn_h")[0],
            dense_hx_g=_dense(sd, "mlp_hx_g"),
            dim_rnn_g=_rnn(sd, "rnn_g")[0],
            dense_gz_z=_dense(sd, "mlp_gz_z"),
            dense_hz_x=_dense(sd, "mlp_hz_x"),
            dense_hz_z=_dense(sd, "mlp_hz_z"),
        )
    elif name == "RVAE":
        hidden_gx, bidir_gx = _rnn(sd, "rnn_g_x")
        hidden_h, bidir_h = _rnn(sd, "rnn_h")
        f.update(
            z_dim=_shape(sd, "inf_mean.weight")[0],
            causal=not bidir_gx,
            dense_x_gx=_dense(sd, "mlp_x_gx"),
            dim_rnn_g_x=hidden_gx,
            dense_z_gz=_dense(sd, "mlp_z_gz"),
            dim_rnn_g_z=_rnn(sd, "rnn_g_z")[0],
            dense_g_z=_dense(sd, "mlp_g_z"),
            dense_z_h=_dense(sd, "mlp_z_h"),
            dim_rnn_h=hidden_h,
            bidir_h=None if bidir_h == bidir_gx else bidir_h,
            dense_h_x=_dense(sd, "mlp_h_x"),
        )
    elif name == "DSAE":
        f.update(
            z_dim=_shape(sd, "inf_z_mean.weight")[0],
            v_dim=_shape(sd, "inf_v_mean.weight")[0],
            dense_x=_dense(sd, "mlp_x"),
            dim_rnn_gv=_rnn(sd, "rnn_g_v")[0],
            dense_gv_v=_dense(sd, "mlp_gv_v"),
            dense_xv_gxv=_dense(sd, "mlp_xv_gxv"),
            dim_rnn_gxv=_rnn(sd, "rnn_g_xv")[0],
            dense_gxv_gz=_dense(sd, "mlp_gxv_gz"),
            dim_rnn_gz=_rnn(sd, "rnn_g_z")[0],
            dim_rnn_prior=_rnn(sd, "rnn_prior")[0],
            dense_vz_x=_dense(sd, "mlp_vz_x"),
        )
    return f


def _parse(key: str, text: str, like):
    """A config.ini string read as the kind of ``like`` (the value inferred from the shapes)."""
    text = str(text).strip()
    try:
        if isinstance(like, bool) or like is None:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(like, tuple):
            return tuple(int(i) for i in text.split(",") if i.strip())
        return int(text)
    except ValueError:
        raise ValueError(f"config.ini: {key} = {text!r} cannot be read as {type(like).__name__}") from None


def infer_dvae_config(
    state_dict: Mapping[str, Any], config_ini: Mapping[str, Any] | str | os.PathLike | None = None, **overrides
) -> dict[str, Any]:
    """``{"model": class name, **fields}`` (see ``avrep.models.dvae.build_model``) of a released checkpoint.

    ``config_ini``: the authors' config.ini (path) or its [Network] values (a dict of strings, keys as
    configparser gives them, lower case). ``overrides``: fields to set regardless (e.g.
    ``scheduled_sampling=True`` for an SRNN_ss whose config does not say so).
    """
    state_dict = canonical_names(state_dict)
    name = _model_name(state_dict)
    fields = _from_shapes(state_dict, name)
    if config_ini is not None:
        cfg = read_config_ini(config_ini) if isinstance(config_ini, (str, os.PathLike)) else dict(config_ini)
        cfg = {str(k).lower(): v for k, v in dict(cfg.get("Network", cfg)).items()}
        # MixDVAE's configs name their SRNNs "SRNN_dvae_single".
        if "name" in cfg and str(cfg["name"]).strip().upper().removesuffix("_DVAE_SINGLE") != name:
            raise ValueError(f"config.ini: name = {cfg['name']!r}, but the state_dict's modules are those of {name}")
        for key, text in cfg.items():
            if key.startswith("num_rnn") and str(text).strip() not in ("", "1"):
                raise ValueError(f"config.ini: {key} = {text!r}; avrep's DVAE models use one recurrent layer")
        # Keys named as avrep's fields, plus the authors' direction flags.
        checks = {k: k for k in fields if k in cfg}
        if name == "RVAE":
            checks.update({k: v for k, v in (("bidir_g_x", "causal"), ("bidir_h", "bidir_h")) if k in cfg})
        for key, field in checks.items():
            got = fields[field]
            value = _parse(key, cfg[key], got)
            if key == "bidir_g_x":
                value = not value
            elif key == "bidir_h" and got is None:
                got = not fields["causal"]
            elif key == "dense_z_x" and got is None:  # VAE: the decoder mirrors the encoder
                got = tuple(reversed(fields["dense_x_z"]))
            if value != got:
                raise ValueError(f"config.ini: {key} = {cfg[key]!r} but the weights say {got!r}")
        if "activation" in cfg:
            fields["activation"] = str(cfg["activation"]).strip()
        if name == "SRNN" and _SS_TAG.search(str(cfg.get("tag", ""))):
            fields["scheduled_sampling"] = True
        if name == "SRNN" and "schedule_sampling" in cfg:  # MixDVAE: [Training] schedule_sampling
            fields["scheduled_sampling"] = _parse("schedule_sampling", cfg["schedule_sampling"], True)
    fields.update(overrides)
    return {"model": name, **fields}


def dvae_variables(state_dict: Mapping[str, Any], model) -> dict[str, dict]:
    """``{"params": ...}`` for ``model`` from a torch state_dict, every tensor checked by name and shape."""
    params, origin = torch_to_flax(canonical_names(state_dict))
    key = jax.random.key(0)
    x = jnp.zeros((1, 2, model.x_dim), jnp.float32)
    expected = jax.eval_shape(lambda: model.init({"params": key, "sample": key}, x))["params"]
    check_against(params, origin, expected, owner=f"{type(model).__name__} checkpoint")
    return {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)}


def load_dvae(weights: str | os.PathLike, config_ini: Mapping[str, Any] | str | os.PathLike | None = None, **overrides):
    """(model, variables) from a released weight file (``.pt`` or ``.npz``) and, optionally, its config.ini."""
    sd = load_state_dict(weights)
    model = build_model(infer_dvae_config(sd, config_ini, **overrides))
    return model, dvae_variables(sd, model)


__all__ = [
    "MODELS",
    "SF_VAE_NAMES",
    "canonical_names",
    "dvae_variables",
    "infer_dvae_config",
    "is_sf_vae",
    "load_dvae",
    "read_config_ini",
]
