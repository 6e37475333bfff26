"""Released checkpoints -> ordinary avrep run directories (``avrep.runs.write_run``).

``import_dvae(weights, out, config_ini=None, preset=None)`` and ``import_speech_vqvae(weights, out,
preset=None)`` read a weight file (``.npz``: one array per state_dict key; anything else: a torch file,
read with the optional ``torch`` extra and ``weights_only=True``), infer the model from its tensor shapes,
map and check every tensor, and write checkpoint 0 of a run whose config has the schema of the family's
config file (``configs/dvae.py``, ``configs/vqvae_audio.py``: ``task``, ``name``, ``data``, ``audio``,
``model``, ``loss``, ``optimizer``, ``train``, ``mesh``, ``debug``) plus a ``source`` block (the imported
file's path and sha256). ``avrep.load_checkpoint(out)`` then returns the model, and
``python evaluate.py --workdir out`` evaluates it on ``data.name`` (default SynthAV's speech,
``synthav/speech``, prepared in ``data.data_dir``).

``audio`` is the STFT the authors' model was trained on (16 kHz, power of a peak-normalised waveform,
centred frames): the DVAE benchmark n_fft 512 / hop 256 / sine window / reflect padding (257 bins);
DVAE_SE 1024 / 256 / sine / reflect (513); the source-filter VAE's IS-VAE ([code-sfvae], layers fc1 ... fc6,
imported as a ``source_filter`` run) Hann 1024 / 256 / reflect; VQ-MAE-S's VQ-VAE Hann 1024 / 320; code-mdvae's
Hann 1024 / 533.

A checkpoint of the other family raises a ValueError naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from avrep import runs
from avrep.convert import dvae as convert_dvae
from avrep.convert import vqvae as convert_vqvae
from avrep.convert.state_dict import load_state_dict
from avrep.models.dvae import PRESETS as DVAE_PRESETS
from avrep.models.dvae import build_model
from avrep.models.vqvae import build_vqvae
from avrep.tasks import build_task

DATASET = "synthav/speech"  # SynthAV's speech view: evaluate.py scores an imported run on its test split
_STFT = dict(sample_rate=16000, window="sine", pad_mode="reflect")
AUDIO = {
    "dvae": dict(_STFT, n_fft=512, hop=256),  # DVAE benchmark (branch interspeech), 257 bins
    "dvae_se": dict(_STFT, n_fft=1024, hop=256),  # DVAE_SE, 513 bins
    "vqmae": dict(sample_rate=16000, n_fft=1024, hop=320, window="hann", pad_mode="constant"),  # VQ-MAE-S
    # The thesis's VQ-MAE-S STFT (hop 256, 75 % overlap): the released tokenizer (trained at hop 320; it is frame-wise,
    # so the hop only sets which frames it sees) as the tokenizer of configs/vqmae.py:audio,paper.
    "vqmae_s": dict(sample_rate=16000, n_fft=1024, hop=256, window="hann", pad_mode="constant"),
    "mdvae": dict(sample_rate=16000, n_fft=1024, hop=533, window="hann", pad_mode="constant"),  # code-mdvae
    "sf_vae": dict(sample_rate=16000, n_fft=1024, hop=256, window="hann", pad_mode="reflect"),  # source-filter VAE
}
VQVAE_SETTINGS = ("vqmae", "vqmae_s", "mdvae")  # the speech VQ-VAEs' STFTs (configs/vqvae_audio.py's variants)
FAMILIES = {"dvae": "a DVAE-family model (VAE, DKF, STORN, VRNN, SRNN, RVAE, DSAE)", "vqvae": "a speech VQ-VAE"}


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_family(state_dict: Mapping[str, Any]) -> str | None:
    """``"vqvae"``, ``"dvae"`` or None: which importable family a state_dict belongs to."""
    if convert_vqvae.is_speech_vqvae(state_dict):
        return "vqvae"
    try:
        convert_dvae.infer_dvae_config(state_dict)
    except ValueError:
        return None
    return "dvae"


def _read(weights, family: str) -> dict:
    """The state_dict of ``weights``; ValueError naming the file unless it is of ``family``."""
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weight file")
    sd = load_state_dict(path)
    found = detect_family(sd)
    if found != family:
        what = f"{FAMILIES[found]} (import it with `python -m avrep.convert {found}`)" if found else "neither"
        modules = sorted({k.split(".")[0] for k in sd})
        raise ValueError(
            f"{path}: expected the state_dict of {FAMILIES[family]}, but this checkpoint holds {what}; its "
            f"top-level modules are {modules}"
        )
    return sd


def _model_block(model: Mapping[str, Any], family_model) -> ml_collections.ConfigDict:
    """The imported ``model`` fields, with the family config's computation dtype (config key model.dtype)."""
    return ml_collections.ConfigDict({**model, **({"dtype": family_model.dtype} if "dtype" in family_model else {})})


def dvae_config(
    model: Mapping[str, Any], *, name: str, beta: float = 1.0, data_name: str = DATASET, data_dir: str = ""
) -> ml_collections.ConfigDict:
    """A run config in the schema of ``configs/dvae.py`` for the DVAE ``model`` (``{"model": ..., **fields}``);
    ``audio`` from its number of bins (257: the DVAE benchmark's STFT, 513: DVAE_SE's)."""
    bins = int(build_model(dict(model)).x_dim)
    setting = {257: "dvae", 513: "dvae_se"}.get(bins)
    if setting is None:
        raise ValueError(f"x_dim={bins} bins: neither the DVAE benchmark's STFT (257 bins) nor DVAE_SE's (513)")
    from configs import dvae  # deferred: the family's config file gives the schema and schedule

    c = dvae.get_config()
    c.name = name
    c.model = _model_block(model, c.model)
    c.audio = ml_collections.ConfigDict(AUDIO[setting])
    c.loss.beta = float(beta)
    c.data.update(name=data_name, data_dir=data_dir)
    return c


def source_filter_config(
    model: Mapping[str, Any], *, name: str, data_name: str = DATASET, data_dir: str = ""
) -> ml_collections.ConfigDict:
    """A run config in the schema of ``configs/source_filter.py`` (task ``source_filter``: ``evaluate.py`` learns
    the f0 / formant subspaces) for the source-filter VAE's IS-VAE ``model``, with its STFT (``AUDIO["sf_vae"]``)."""
    from configs import source_filter  # deferred: the family's config file gives the schema

    c = source_filter.get_config()
    c.name = name
    c.model = _model_block(model, c.model)
    c.audio = ml_collections.ConfigDict(AUDIO["sf_vae"])
    c.data.update(name=data_name, data_dir=data_dir)
    return c


def speech_vqvae_config(
    model: Mapping[str, Any], *, name: str, setting: str, data_name: str = DATASET, data_dir: str = ""
) -> ml_collections.ConfigDict:
    """A run config in the schema of ``configs/vqvae_audio.py`` for the audio VQ-VAE ``model``; ``setting``:
    ``"vqmae"`` (VQ-MAE-S's STFT, hop 320), ``"vqmae_s"`` (the thesis's VQ-MAE-S STFT, hop 256) or ``"mdvae"``
    (code-mdvae's, hop 533)."""
    if setting not in VQVAE_SETTINGS:
        raise ValueError(f"speech VQ-VAE preset {setting!r}: expected one of {VQVAE_SETTINGS}")
    from configs import vqvae_audio  # deferred: the family's config file gives the schema and schedule

    c = vqvae_audio.get_config(setting if setting != "mdvae" else None)
    c.name = name
    c.model = _model_block(model, c.model)
    c.audio = ml_collections.ConfigDict(AUDIO[setting])
    c.data.update(name=data_name, data_dir=data_dir)
    return c


def _write(out, config: ml_collections.ConfigDict, variables: dict) -> str:
    """Checks that the config's task restores exactly ``variables``, then writes the run."""
    if os.path.exists(os.path.join(out, runs.CHECKPOINT_SUBDIR)):
        raise FileExistsError(f"{out} already holds a run ({runs.CHECKPOINT_SUBDIR}/); choose another --out")
    task = build_task(config)
    abstract = jax.eval_shape(task.init_variables, jax.random.key(0), task.dummy_batch())
    want = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    got = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_flatten_with_path(variables)[0]}
    if want != got:
        raise ValueError(
            f"{config.name}: the imported variables do not match the task's ({sorted(set(want) ^ set(got))})"
        )
    return runs.write_run(out, config, variables)


def _source(weights, family: str, **extra) -> dict:
    path = os.path.abspath(os.fspath(weights))
    return dict(family=family, weights=path, sha256=sha256(path), **extra)


def import_dvae(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    config_ini: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    name: str | None = None,
    data_name: str = DATASET,
    data_dir: str = "",
) -> str:
    """Writes a run directory ``out`` holding a released DVAE-family checkpoint; returns its path.

    ``config_ini``: the authors' config.ini beside the weights (activation, SRNN_ss tag, beta; checked
    against the shapes). ``preset``: a key of ``avrep.models.dvae.PRESETS`` whose fields the shapes must
    match; it supplies what shapes cannot tell (e.g. ``dvae_se/SRNN``: the scheduled-sampling SRNN).
    """
    out = os.fspath(out)
    sd = _read(weights, "dvae")
    where = os.fspath(weights)
    try:
        inferred = convert_dvae.infer_dvae_config(sd, config_ini)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    fields = {k: v for k, v in inferred.items() if v is not None}
    if preset is not None:
        if preset not in DVAE_PRESETS:
            raise ValueError(f"--preset {preset!r}: expected one of {sorted(DVAE_PRESETS)}")
        ours, theirs = build_model(inferred), build_model(preset)
        if type(ours) is not type(theirs):
            raise ValueError(f"{where} holds a {type(ours).__name__}, preset {preset} is a {type(theirs).__name__}")
        differ = [
            f"{k}: the weights say {getattr(ours, k)!r}, the preset {getattr(theirs, k)!r}"
            for k in inferred
            if k != "model" and getattr(ours, k) != getattr(theirs, k)
        ]
        if differ:
            raise ValueError(f"{where} does not match preset {preset}: " + "; ".join(differ))
        fields = {**DVAE_PRESETS[preset], **fields}
    model = build_model(fields)
    try:
        variables = convert_dvae.dvae_variables(sd, model)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    beta = 1.0
    if config_ini is not None:
        ini = convert_dvae.read_config_ini(config_ini) if isinstance(config_ini, (str, os.PathLike)) else config_ini
        beta = float(dict(ini).get("beta", 1.0))
    run_name = name or os.path.basename(os.path.normpath(out))
    if convert_dvae.is_sf_vae(sd):
        config = source_filter_config(fields, name=run_name, data_name=data_name, data_dir=data_dir)
    else:
        config = dvae_config(fields, name=run_name, beta=beta, data_name=data_name, data_dir=data_dir)
    extra = dict(
        preset=preset or "",
        config_ini=os.path.abspath(config_ini) if isinstance(config_ini, (str, os.PathLike)) else "",
    )
    with config.unlocked():
        config.source = ml_collections.ConfigDict(_source(weights, "dvae", **extra))
    return _write(out, config, variables)


def import_speech_vqvae(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str | None = None,
    batch_stats_mode: str = "running",
    name: str | None = None,
    data_name: str = DATASET,
    data_dir: str = "",
) -> str:
    """Writes a run directory ``out`` holding a released speech VQ-VAE; returns its path.

    ``preset``: the STFT setting, ``"vqmae"`` (VQ-MAE-S's tokenizers: Hann 1024, hop 320), ``"vqmae_s"`` (hop 256:
    the tokenizer of ``configs/vqmae.py:audio,paper``) or ``"mdvae"``
    (code-mdvae's: hop 533); by default ``"vqmae"`` for a network with BatchNorm (VQ-MAE-S's), else
    ``"mdvae"``. ``batch_stats_mode``: BatchNorm statistics at inference, ``"running"`` (avrep's default) or
    ``"batch"`` (the authors' tokenisation; ``avrep.models.vqvae``).
    """
    out = os.fspath(out)
    sd = _read(weights, "vqvae")
    where = os.fspath(weights)
    try:
        fields = convert_vqvae.infer_speech_vqvae_config(sd, batch_stats_mode=batch_stats_mode)
        model = build_vqvae(fields)
        variables = convert_vqvae.speech_vqvae_variables(sd, model)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    setting = preset or ("vqmae" if fields["batch_norm"] else "mdvae")
    config = speech_vqvae_config(
        fields,
        name=name or os.path.basename(os.path.normpath(out)),
        setting=setting,
        data_name=data_name,
        data_dir=data_dir,
    )
    with config.unlocked():
        config.source = ml_collections.ConfigDict(_source(weights, "speech_vqvae", preset=setting))
    return _write(out, config, variables)


__all__ = [
    "AUDIO",
    "detect_family",
    "dvae_config",
    "import_dvae",
    "import_speech_vqvae",
    "source_filter_config",
    "speech_vqvae_config",
]
