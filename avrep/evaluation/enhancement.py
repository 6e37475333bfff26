"""Unsupervised speech enhancement, evaluated in the form of [Lin-thesis] Tables 6.1-6.3 (keys: docs/REFERENCES.md).

A workdir trained by ``python train.py --workdir W --pipeline se`` holds ``se_plan.json`` (configs/se_pipeline.py):
the noisy test sets (``data_pipelines/noisy_speech.py``: clean test utterances, the noise and the SNR stored),
the speech-prior runs and the per-utterance budget. For every test set (a "condition") this module scores

  * the noisy mixture itself, against the clean reference;
  * the oracle Wiener filter |S|² / (|S|² + |N|²) · X from the true speech and noise STFTs (an upper bound);
  * the methods the plan lists (``METHODS``), each with the priors it names: VEM with an NMF noise model
    ([DVAE-SE]; RVAE-VEM, the thesis's baseline, with an RVAE prior) and VAE + NMF by Monte-Carlo EM (U-NA),
    the DVAE noise models LV / NO / NOLV ([Lin-thesis] Ch. 6) in U-NA (per utterance), U-ND (trained on the
    condition's noisy *train* split, the plan's ``und`` budget, then one forward pass) and U-NDA (U-ND's
    networks adapted per utterance);

on the same first ``limit`` test utterances, with SI-SDR (dB), PESQ wide-band (P.862.2) and narrow-band
(P.862 + P.862.1 mapping, the 16 kHz input filtered by the library), and ESTOI (pystoi). Enhancement runs
batched: ``batch`` utterances, sorted by length, go through one compiled program (``vmap`` over utterances).
The real-time factor is processing seconds per second of audio, compilation excluded (JAX's own compile-time
events are subtracted from the wall time), on the device named in the table, at the stated batch size.

Outputs in ``<workdir>/eval/``: se_results.md/.csv (per condition × method × prior × configuration),
se_by_snr.md/.csv (per SNR), se_av.md/.csv (audio-only vs audiovisual per SNR, the plan's ``av``
block: av_enhancement.py), se_rtf.md/.csv, se_per_utterance.csv, se_<condition>_spectrograms.png (noisy /
enhanced / clean) and se_audio/<condition>/*.wav (a few examples: noisy, clean, each enhanced version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from typing import Callable

import jax
import numpy as np

from avrep import runs
from avrep.evaluation import metrics as metrics_lib
from avrep.evaluation.tables import summarize_rows, write_csv, write_table
from avrep.models import enhancement as se
from avrep.runs import CHECKPOINT_SUBDIR
from avrep.tasks import load_checkpoint
from data_pipelines.sources import open_source

PLAN_FILE = "se_plan.json"  # written by configs/se_pipeline.py; runner.py looks for it
SAMPLE_RATE = 16000
NOISY_LABEL, ORACLE_LABEL = "Noisy mixture", "Wiener filter (oracle)"  # the reference rows of every table
METRICS = ("si_sdr", "pesq", "pesq_nb", "estoi")
_METRIC_COLUMNS = [
    ("si_sdr", "SI-SDR (dB) ↑", 2),
    ("pesq", "PESQ WB ↑", 2),
    ("pesq_nb", "PESQ NB ↑", 2),
    ("estoi", "ESTOI ↑", 3),
]
_NOTES = [
    "Mean ± std over the test utterances scored (n; the same utterances for every row of a condition). "
    "Conditions: noisy_speech test sets (SynthAV test speakers, generated noise of the test noise set; "
    "wsj0_qut_like: SNR -5/0/5 dB, vb_dmd_like: 2.5/7.5/12.5/17.5 dB). SI-SDR against the clean reference; "
    "PESQ WB: ITU-T P.862.2; PESQ NB: P.862 with the P.862.1 mapping (the `pesq` package, 'nb' mode); ESTOI: "
    "pystoi. STFT: sine window 1024, hop 256, centre zero padding; the noisy waveform is peak-normalised "
    "before enhancement and the estimate rescaled. settings: the plan entry's (the SE pipeline's VEM and MCEM: "
    "nmf_rank=2); '-': the method's defaults (NMF rank 25, the authors'). U-NA: optimised on each test utterance "
    "alone. Oracle Wiener filter: the true speech and noise STFTs. Priors: the checkpoint with the lowest validation "
    "loss."
]


@dataclasses.dataclass(frozen=True)
class Method:
    """An enhancement method: ``enhance(model, variables, batch, iterations, key, trained) -> S_hat [B, T, F]``,
    ``trained`` the output of the noise model trained on noisy speech (``trains``: U-ND, U-NDA), else None."""

    name: str  # the row label; "{prior}" is replaced by the prior's display name
    config: str  # U-NA / U-ND / U-NDA, as [Lin-thesis] Table 6.1
    enhance: Callable
    unsupported: Callable  # (module, params) -> None, or why the method cannot use this prior
    trains: str | None = None  # the noise-model kind trained on the noisy train split first (U-ND, U-NDA)
    settings: type | None = None  # the settings dataclass whose fields a plan entry's "settings" may set


def _vem(model, variables, batch, iterations: int, key, trained=None, **options):
    settings = se.VEMSettings(num_iterations=iterations, **options)
    return se.enhance_vem(model, variables, batch.X, batch.mask, settings=settings, key=key)["S_hat"]


def _mcem(model, variables, batch, iterations: int, key, trained=None, **options):
    settings = se.MCEMSettings(num_iterations=iterations, **options)
    return se.mcem(model, variables, batch.X, batch.mask, settings=settings, key=key)["S_hat"]


def _una(kind: str) -> Callable:
    def enhance(model, variables, batch, iterations: int, key, trained=None):
        settings = se.NoiseModelSettings(kind=kind, num_iterations=iterations)
        return se.una(model, variables, batch.X, batch.mask, settings=settings, key=key, start=trained)["S_hat"]

    return enhance


def _und(kind: str) -> Callable:
    def enhance(model, variables, batch, iterations: int, key, trained=None):
        settings = se.NoiseModelSettings(kind=kind)
        return se.und(model, variables, trained, batch.X, batch.mask, settings=settings)["S_hat"]

    return enhance


def _why_unsupported(module, params) -> str | None:
    """None when the algorithms accept the prior, else their reason (e.g. a teacher-forced SRNN)."""
    try:
        se.split_params(module, params)
    except ValueError as e:
        return str(e)
    return None


def _is_prior(*names: str) -> Callable:
    def why(module, params):
        if type(module).__name__ not in names:
            return f"a {type(module).__name__} prior is not one of {names}"
        return _why_unsupported(module, params)

    return why


# Method ids (the plan's "methods" entries name them) -> Method. The thesis's row names: RVAE-VEM is VEM with an
# RVAE prior ([DVAE-SE]); RVAE-LV / -NO / -NOLV the DVAE noise models ([Lin-thesis] eq. 6.9-6.16); VAE-MCEM the
# slides' audio-only baseline (a frame-wise VAE prior, NMF noise, Monte-Carlo EM).
METHODS = {
    "vem": Method("{prior}-VEM", "U-NA", _vem, _why_unsupported, settings=se.VEMSettings),
    "mcem": Method("{prior}-MCEM", "U-NA", _mcem, _is_prior("VAE"), settings=se.MCEMSettings),
    **{
        f"una_{kind.lower()}": Method(f"{{prior}}-{kind}", "U-NA", _una(kind), _why_unsupported)
        for kind in se.noise_models.KINDS
    },
    # U-ND: one forward pass of the networks trained on the noisy train split ("iterations" is not read);
    # U-NDA: per-utterance adaptation from them ([Lin-thesis] Table 6.3: 190 iterations on WSJ0-QUT, 25 on VB-DMD).
    **{
        f"und_{kind.lower()}": Method(f"{{prior}}-{kind}", "U-ND", _und(kind), _why_unsupported, trains=kind)
        for kind in se.noise_models.KINDS
    },
    **{
        f"unda_{kind.lower()}": Method(f"{{prior}}-{kind}", "U-NDA", _una(kind), _why_unsupported, trains=kind)
        for kind in se.noise_models.KINDS
    },
}


@contextlib.contextmanager
def compile_timer():
    """Yields a one-element list that accumulates the seconds JAX spends tracing, lowering and compiling."""
    events = {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
    total = [0.0]

    def listen(event, duration, **kwargs):
        if event in events:
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def device_description() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores, {jax.device_count()} XLA device(s))"
    return f"{device.platform.upper()} {device.device_kind} x{jax.device_count()}"


def load_mixtures(dataset: str, data_dir: str, limit: int | None) -> list[dict]:
    """The first ``limit`` mixtures of the test split (the builder's balanced order)."""
    from data_pipelines.noisy_speech import decode_mixture  # deferred: it imports TFDS (the builder)

    source = open_source(dataset, "test", data_dir)
    count = len(source) if limit is None else min(limit, len(source))
    return [decode_mixture(source[i], f"{source.description}: record {i}") for i in range(count)]


def oracle_wiener(mixture: dict) -> np.ndarray:
    """The oracle Wiener estimate of one mixture: |S|² / (|S|² + |N|²) applied to the noisy STFT."""
    n = mixture["noisy"].size
    spectra = {k: se.frontend.stft(mixture[k][None]) for k in ("clean", "noise", "noisy")}
    speech, noise_power = np.abs(spectra["clean"]) ** 2, np.abs(spectra["noise"]) ** 2
    gain = speech / np.maximum(speech + noise_power, np.finfo(np.float32).tiny)
    return np.asarray(se.frontend.istft(gain * spectra["noisy"], n))[0]


def noisy_windows(dataset: str, data_dir: str, settings: se.UNDSettings, *, utterances: int, seed: int) -> Callable:
    """``windows(step) -> (power [B, T, F], mask [B, T])``: random windows of ``settings.frames`` frames of the
    noisy waveforms (peak-normalised as at test time) of the first ``utterances`` mixtures of the dataset's
    train split, ``settings.batch_size`` per step, drawn from ``seed`` and the step; an utterance shorter than
    a window is padded (mask False). Only the noisy signal is read: U-ND never sees the clean references."""
    from data_pipelines.noisy_speech import decode_mixture  # deferred: it imports TFDS (the builder)

    source = open_source(dataset, "train", data_dir)
    count = min(utterances, len(source))
    if count < 1:
        raise ValueError(f"U-ND training: {source.description} has no mixtures (build its train split)")
    noisy = [decode_mixture(source[i], f"{source.description}: record {i}")["noisy"] for i in range(count)]
    powers = se.frontend.power_spectrograms(noisy)
    frames, bins = settings.frames, powers[0].shape[-1]

    def windows(step: int):
        rng = np.random.default_rng([seed, step])
        power = np.zeros((settings.batch_size, frames, bins), np.float32)
        mask = np.zeros((settings.batch_size, frames), bool)
        for b, u in enumerate(rng.integers(0, count, settings.batch_size)):
            p = powers[u]
            start = int(rng.integers(0, max(p.shape[0] - frames, 0) + 1))
            window = p[start : start + frames]
            power[b, : window.shape[0]], mask[b, : window.shape[0]] = window, True
        return power, mask

    return windows


def train_noise_model(model, variables, kind: str, dataset: str, plan: dict) -> tuple[dict, float, np.ndarray]:
    """U-ND training of a ``kind`` noise model for one prior on the noisy train split of ``dataset`` with the
    plan's ``und`` budget: (the trained networks, seconds, the objective at every step)."""
    budget = dict(plan.get("und", {}))
    utterances = int(budget.pop("utterances", 200))
    settings = se.UNDSettings(noise=se.NoiseModelSettings(kind=kind), **budget)
    windows = noisy_windows(dataset, plan["data_dir"], settings, utterances=utterances, seed=int(plan["seed"]))
    began = time.perf_counter()
    trained, losses = se.train_und(model, variables, windows, settings=settings, key=jax.random.key(int(plan["seed"])))
    return trained, time.perf_counter() - began, losses


def method_options(entry: dict) -> dict:
    """The plan entry's ``settings`` (e.g. ``{"nmf_rank": 4}``), checked against its method's settings dataclass:
    a ValueError naming the plan key for a method without settings, an unknown field or a bad value."""
    options = entry.get("settings", {})
    if not options:
        return {}
    method = METHODS[entry["method"]]
    where = f"{PLAN_FILE}: method {entry['method']!r} settings"
    if method.settings is None:
        raise ValueError(
            f"{where}: this method takes no settings (only {[k for k, m in METHODS.items() if m.settings]})"
        )
    if not isinstance(options, dict):
        raise ValueError(f"{where}: {options!r}; expected an object of field names and values")
    fields = {f.name for f in dataclasses.fields(method.settings)} - {"num_iterations"}  # iterations: per condition
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(fields)}")
    method.settings(**options)  # its own checks (e.g. a positive rank) name the field
    return dict(options)


def _score(mixture: dict, estimate: np.ndarray) -> dict:
    return metrics_lib.audio_metrics(mixture["clean"], estimate, SAMPLE_RATE, METRICS)


def _load_prior(run_dir: str):
    best = runs.best_step(run_dir)
    return load_checkpoint(os.path.join(run_dir, CHECKPOINT_SUBDIR, str(best))), best


def enhance_all(
    method: Method, model, mixtures: list[dict], *, batch: int, iterations: int, seed: int, trained=None, options=None
):
    """(estimates in the mixtures' order, processing seconds without compilation, compile seconds); ``options``:
    the plan entry's settings (:func:`method_options`)."""
    order = sorted(range(len(mixtures)), key=lambda i: mixtures[i]["noisy"].size)
    estimates: list[np.ndarray | None] = [None] * len(mixtures)
    module, variables = model.task.module, {"params": model.variables["params"]}
    wall, timed_compile = 0.0, method.config != "U-ND"
    with compile_timer() as compiled:
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            frames = se.batch_stft([mixtures[i]["noisy"] for i in chunk])
            key = jax.random.fold_in(jax.random.key(seed), start)
            began = time.perf_counter()
            extra = {"trained": trained} if method.trains else {}
            extra.update(options or {})
            if method.config == "U-ND":
                # One pass is shorter than its compilation, which the subtracted compile events over-count
                # (nested traces): the compiled program is run once first and the second run timed.
                jax.block_until_ready(method.enhance(module, variables, frames, iterations, key, **extra))
                began = time.perf_counter()
            S_hat = jax.block_until_ready(method.enhance(module, variables, frames, iterations, key, **extra))
            wall += time.perf_counter() - began
            for i, wave in zip(chunk, se.batch_istft(S_hat, frames)):
                estimates[i] = wave
    return estimates, max(wall - compiled[0], 0.0) if timed_compile else wall, compiled[0]


def _spectrogram_figure(path: str, title: str, panels: list[tuple[str, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    powers = [(label, np.abs(np.asarray(se.frontend.stft(w[None])))[0] ** 2) for label, w in panels]
    top = 10 * np.log10(max(p.max() for _, p in powers) + 1e-10)
    fig, axes = plt.subplots(len(powers), 1, figsize=(8, 2.1 * len(powers)), sharex=True)
    for ax, (label, power) in zip(np.atleast_1d(axes), powers):
        ax.imshow(10 * np.log10(power.T + 1e-10), origin="lower", aspect="auto", cmap="magma", vmin=top - 80)
        ax.set_ylabel(f"{label}\nbin", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("frame (16 ms)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_wavs(directory: str, mixture: dict, estimates: dict[str, np.ndarray]) -> None:
    import soundfile as sf

    os.makedirs(directory, exist_ok=True)
    waves = {"noisy": mixture["noisy"], "clean": mixture["clean"], **estimates}
    peak = max(float(np.max(np.abs(w))) for w in waves.values())
    for label, wave in waves.items():  # one scale for all versions, so their loudness compares
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{mixture['utterance_id']}_{label}").strip("_") + ".wav"
        sf.write(os.path.join(directory, name), np.asarray(wave) / peak * 0.99, SAMPLE_RATE, subtype="PCM_16")


def evaluate_condition(name: str, condition: dict, plan: dict, out_dir: str, log=print, limit=None) -> dict:
    """Rows of the three tables and the per-utterance rows of one noisy test set."""
    mixtures = load_mixtures(condition["dataset"], plan["data_dir"], limit or plan["limit"])
    audio_seconds = sum(m["noisy"].size for m in mixtures) / SAMPLE_RATE
    log(f"[avrep] se {name}: {len(mixtures)} test mixtures ({audio_seconds:.1f} s) of {condition['dataset']}")
    per_utterance, rtf_rows = [], []
    outputs: dict[str, list[np.ndarray]] = {}

    def add(method: str, prior: str, config: str, estimates, run: str = "-", settings: str = "-") -> None:
        outputs[method if settings == "-" else f"{method} ({settings})"] = estimates
        for m, est in zip(mixtures, estimates):
            per_utterance.append(
                dict(
                    condition=name,
                    method=method,
                    prior=prior,
                    config=config,
                    settings=settings,
                    run=run,
                    utterance_id=m["utterance_id"],
                    snr_db=round(m["snr_db"], 2) + 0.0,  # no -0.0
                    noise_kind=m["noise_kind"],
                    **_score(m, est),
                )
            )

    add(NOISY_LABEL, "-", "-", [m["noisy"] for m in mixtures])
    add(ORACLE_LABEL, "-", "-", [oracle_wiener(m) for m in mixtures])
    priors = {}
    for prior_name, run_dir in plan["priors"].items():
        if os.path.isdir(os.path.join(run_dir, CHECKPOINT_SUBDIR)):
            priors[prior_name] = (*_load_prior(run_dir), run_dir)
        else:
            log(f"[avrep] se {name}: no trained prior in {run_dir}; its rows are left out")
    trained_noise = {}  # (prior, kind) -> U-ND networks, shared by U-ND and U-NDA
    for entry in plan["methods"]:
        if entry["method"] not in METHODS:
            raise ValueError(f"{PLAN_FILE}: unknown method {entry['method']!r}; expected one of {sorted(METHODS)}")
        method, iterations = METHODS[entry["method"]], int(entry["iterations"].get(name, 0))
        options = method_options(entry)
        for prior_name in entry["priors"]:
            if prior_name not in priors:
                continue
            model, step, run_dir = priors[prior_name]
            display = model.task.display_name
            why = method.unsupported(model.task.module, model.variables["params"])
            if why:
                log(f"[avrep] se {name}: {method.name.format(prior=display)} skipped: {why}")
                continue
            label = method.name.format(prior=display)
            trained, train_seconds = None, 0.0
            if method.trains:
                if (prior_name, method.trains) not in trained_noise:
                    variables = {"params": model.variables["params"]}
                    fit = train_noise_model(model.task.module, variables, method.trains, condition["dataset"], plan)
                    trained_noise[prior_name, method.trains] = fit
                    log(
                        f"[avrep] se {name}: U-ND {display}-{method.trains} trained in {fit[1]:.0f} s, objective "
                        f"{np.mean(fit[2][:20]):.3f} -> {np.mean(fit[2][-20:]):.3f} per frame"
                    )
                    train_seconds = fit[1]
                trained = trained_noise[prior_name, method.trains][0]
            estimates, seconds, compile_seconds = enhance_all(
                method,
                model,
                mixtures,
                batch=int(plan["batch"]),
                iterations=iterations,
                seed=int(plan["seed"]),
                trained=trained,
                options=options,
            )
            shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
            add(label, display, method.config, estimates, run=f"{os.path.basename(run_dir)}@{step}", settings=shown)
            rtf_rows.append(
                dict(
                    condition=name,
                    method=label,
                    config=method.config,
                    settings=shown,
                    iterations=iterations if method.config != "U-ND" else "-",
                    batch=min(int(plan["batch"]), len(mixtures)),
                    device=device_description(),
                    rtf=seconds / audio_seconds,
                    compile_s=compile_seconds,
                    train_s=train_seconds,
                    n=len(mixtures),
                )
            )
            log(
                f"[avrep] se {name}: {label} ({shown}) RTF {seconds / audio_seconds:.3f} "
                f"(compile {compile_seconds:.1f} s)"
            )

    av = plan.get("av")
    if av and av.get("condition") == name:
        if os.path.isdir(os.path.join(plan["data_dir"], av["dataset"])):
            rtf_rows += _audiovisual_rows(name, av, plan, mixtures, add, log)
        else:
            log(f"[avrep] se {name}: {av['dataset']} is not built in {plan['data_dir']}; no audiovisual rows")

    for k, m in enumerate(mixtures[: int(plan["examples"])]):
        enhanced = {label: est[k] for label, est in outputs.items() if label != NOISY_LABEL}
        _write_wavs(os.path.join(out_dir, "se_audio", name), m, enhanced)
        if k == 0:
            shown = [label for label in outputs if label not in (NOISY_LABEL, ORACLE_LABEL)][:1]
            panels = [("noisy", m["noisy"])] + [(label, outputs[label][0]) for label in shown] + [("clean", m["clean"])]
            _spectrogram_figure(
                os.path.join(out_dir, f"se_{name}_spectrograms.png"),
                f"{name}: {m['utterance_id']}, {m['noise_kind']} noise at {m['snr_db']:.1f} dB",
                panels,
            )
    return {"per_utterance": per_utterance, "rtf": rtf_rows}


def _audiovisual_rows(name: str, av: dict, plan: dict, mixtures: list[dict], add, log) -> list[dict]:
    """AV-CVAE and its audio-only counterpart on the same mixtures, read with their video from ``av["dataset"]``
    (the condition's ``_av`` test split); returns their RTF rows."""
    from avrep.evaluation import av_enhancement

    with_video = load_mixtures(av["dataset"], plan["data_dir"], len(mixtures))
    ids, av_ids = [m["utterance_id"] for m in mixtures], [m["utterance_id"] for m in with_video]
    if av_ids != ids:
        raise ValueError(f"{PLAN_FILE}: av.dataset {av['dataset']} does not hold the mixtures of {name} in order")
    log(f"[avrep] se {name}: audio-only vs audiovisual on {len(with_video)} mixtures of {av['dataset']}")
    rows = []
    audio_seconds = sum(m["noisy"].size for m in mixtures) / SAMPLE_RATE
    for label, (estimates, info) in av_enhancement.train_and_enhance(av, plan, with_video, log).items():
        prior = "AV-CVAE" if label == av_enhancement.AV_LABEL else "A-CVAE"
        add(label, prior, "U-NA", estimates, run=f"trained here ({av['train_dataset']})")
        rows.append(
            dict(
                condition=name,
                method=label,
                config="U-NA",
                settings="-",
                iterations=int(av["iterations"]),
                batch=min(int(plan["batch"]), len(mixtures)),
                device=device_description(),
                rtf=info["seconds"] / audio_seconds,
                compile_s=0.0,
                train_s=info["train_s"],
                n=len(mixtures),
            )
        )
    return rows


def _group(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return [dict(zip(keys, key), **summarize_rows(items, METRICS)) for key, items in groups.items()]


def evaluate_plan(workdir: str, out_dir: str, *, log=print, limit: int | None = None) -> dict[str, tuple[str, str]]:
    """Every condition of ``<workdir>/se_plan.json``; writes the tables, figures and WAVs into ``out_dir``."""
    with open(os.path.join(workdir, PLAN_FILE)) as f:
        plan = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    per_utterance, rtf_rows = [], []
    for name, condition in plan["conditions"].items():
        result = evaluate_condition(name, condition, plan, out_dir, log=log, limit=limit)
        per_utterance += result["per_utterance"]
        rtf_rows += result["rtf"]
    written = {}
    result_keys = ("condition", "method", "prior", "config", "settings", "run")
    results = _group(per_utterance, result_keys)
    written["se_results"] = write_table(
        out_dir,
        "se_results",
        "Unsupervised speech enhancement (form of [Lin-thesis] Tables 6.1-6.2)",
        results,
        result_keys,
        _METRIC_COLUMNS,
        _NOTES,
    )
    snr_keys = ("condition", "snr_db", "method", "config", "settings", "run")
    by_snr = _group(per_utterance, snr_keys)  # one row per prior run and settings
    by_snr.sort(key=lambda r: (r["condition"], r["snr_db"]))
    written["se_by_snr"] = write_table(
        out_dir,
        "se_by_snr",
        "Speech enhancement per input SNR (audio-only and audiovisual methods side by side)",
        by_snr,
        snr_keys,
        _METRIC_COLUMNS,
        _NOTES[:1],
    )
    from avrep.evaluation.av_enhancement import AUDIO_LABEL, AV_LABEL  # deferred: it imports this module

    av_labels = {NOISY_LABEL, AUDIO_LABEL, AV_LABEL}
    av_rows = [r for r in by_snr if r["method"] in av_labels]
    if any(r["method"] != NOISY_LABEL for r in av_rows):
        written["se_av"] = write_table(
            out_dir,
            "se_av",
            "Audio-only vs audiovisual speech enhancement per input SNR ([AV-slides]' AV-CVAE)",
            av_rows,
            snr_keys,
            _METRIC_COLUMNS,
            _NOTES[:1]
            + [
                "A-CVAE / AV-CVAE: the same frame-wise speech VAE widths trained on the same clean windows of the "
                "audiovisual training set, without / with the lip images (visual prior, modified ELBO with the "
                "plan's alpha); both enhanced by the same Monte-Carlo EM with an NMF noise model. RTF of the "
                "AV rows includes their compilation."
            ],
        )
    if rtf_rows:
        rtf_columns = ("condition", "method", "config", "settings", "iterations", "batch", "device")
        written["se_rtf"] = write_table(
            out_dir,
            "se_rtf",
            "Real-time factor of enhancement (form of [Lin-thesis] Table 6.3)",
            rtf_rows,
            rtf_columns,
            [("rtf", "RTF ↓", 3), ("compile_s", "compile (s)", 1), ("train_s", "U-ND training (s)", 0)],
            [
                "RTF: seconds of processing per second of test audio (n utterances enhanced in batches of `batch`, "
                "one compiled program per batch; JAX's tracing and compilation time excluded and shown apart). "
                "The thesis's RTFs were measured one utterance at a time on a Quadro RTX 4000. U-ND training (on the "
                "condition's noisy train split, the plan's `und` budget) is shown apart, on the first row that "
                "needed it; U-NDA reuses U-ND's networks."
            ],
        )
    columns = [*result_keys, "utterance_id", "snr_db", "noise_kind", *METRICS]
    write_csv(os.path.join(out_dir, "se_per_utterance.csv"), per_utterance, columns)
    for md, _ in written.values():
        log(f"[avrep] wrote {md}")
    return written
