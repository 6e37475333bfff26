"""The source-filter VAE's evaluation ([SF-VAE] = [Sadok-thesis] Ch. 3; keys: docs/REFERENCES.md), in the form of
the thesis's tables, on a ``source_filter`` run (``evaluate.py`` calls :func:`evaluate_run`):

* ``<run>_sf_retained_variance.{md,csv}`` (Table 3.1): cumulative variance kept by M_i = 1 ... 6 components, and
  the M_i chosen by the 80 % rule;
* ``<run>_sf_orthogonality.{csv,png}`` (Fig. 3.5): dot products between all basis vectors of the four subspaces;
* ``<run>_sf_transformation.{md,csv}`` (Table 3.3 form): on sustained vowels of SynthAV's test speakers
  (``trajectories.sustained_vowel``, the stand-in of the English-vowels set), each factor moved to targets over
  the ranges of Table 3.2; accuracy delta f_i = |measured - target| / target and disentanglement delta f_j =
  |measured - measured on the input| / measured on the input (%), measured with avrep's extractors (pYIN f0, LPC
  F1-F3, the median over the vowel's central frames). Methods: the proposed transformation (Eq. 3.12), the VAE
  baseline of Hsu et al. (latent arithmetic, given the true source value) and, for f0, WORLD (``pyworld``:
  analysis, f0 replaced, synthesis) when installed. No naturalness column: NISQA's model cannot be downloaded;
* ``<run>_sf_gross_pitch_error.{csv,png}`` (Fig. 3.6 form): gross pitch error PE = #{|f0_est - f0| / f0 >= lambda}
  / #frames (%) for lambda = 20, 10, 1 % against SNR (-10 ... 40 dB; white and pink noise generated here) on
  synthetic utterances with known f0 (a smooth random contour over a random SynthAV vowel; every frame voiced,
  so voicing is given to every method as in the thesis): Proposed(p) and Proposed(z) (Eq. 3.16 + median of 5),
  pYIN (``librosa.pyin``, its best f0 on every frame) and SWIPE (``pysptk.swipe``) when installed.

Sizes come from the run config's ``source_filter`` block (``eval_*`` keys; ``configs/source_filter.py``).
"""

from __future__ import annotations

import os

import librosa
import numpy as np

from avrep.evaluation import attributes
from avrep.evaluation import source_filter as sfe
from avrep.evaluation.tables import summarize_rows, write_csv, write_table
from avrep.models import source_filter as sf
from data_pipelines.synthav import generator, trajectories

FACTORS = trajectories.FACTORS
# Table 3.2: (min, max) Hz of the transformation targets.
TARGET_RANGES = {"f0": (100.0, 300.0), "f1": (300.0, 900.0), "f2": (1100.0, 2700.0), "f3": (2200.0, 3200.0)}
PE_THRESHOLDS = (0.20, 0.10, 0.01)
EVAL_DEFAULTS = dict(
    eval_vowels=20, eval_targets=5, gpe_utterances=8, gpe_seconds=2.0, gpe_snrs=tuple(range(-10, 45, 5))
)
F0_RANGE = (60.0, 400.0)  # pYIN / SWIPE search range (Hz)


def _settings(config) -> dict:
    block = dict(config.get("source_filter") or {})
    return {k: block.get(k, v) for k, v in EVAL_DEFAULTS.items()}


def retained_variance_rows(model: sfe.SourceFilterModel, max_components: int = 6) -> list[dict]:
    rows = []
    for m in range(1, max_components + 1):
        rows.append({"M": m, **{f: 100.0 * model.subspaces[f].retained[m - 1] for f in FACTORS}})
    rows.append({"M": "chosen M_i", **{f: float(model.subspaces[f].dim) for f in FACTORS}})
    return rows


def orthogonality_outputs(model: sfe.SourceFilterModel, out_dir: str, run: str) -> dict:
    gram, labels = sf.orthogonality({f: model.subspaces[f].basis for f in FACTORS})
    path = os.path.join(out_dir, f"{run}_sf_orthogonality.csv")
    write_csv(path, [{"": lab, **dict(zip(labels, row))} for lab, row in zip(labels, gram)], ["", *labels])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(gram, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im)
    ax.set_title(f"{run}: U^T U of the f0, f1, f2, f3 subspaces")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{run}_sf_orthogonality.png"), dpi=120)
    plt.close(fig)
    cross = gram.copy()
    start = 0
    for f in FACTORS:  # zero the within-subspace blocks: only cross-factor products are of interest
        d = model.subspaces[f].dim
        cross[start : start + d, start : start + d] = 0.0
        start += d
    return {"path": path, "max_cross": float(np.abs(cross).max())}


def test_vowels(count: int, seed: int = 0) -> list[dict]:
    """``count`` sustained vowels of SynthAV's test speakers (their f0 and vocal-tract factor; the speech
    dataset's 40 speakers and speaker split), vowels taken in turn."""
    speakers = generator.split_speakers(generator.make_speakers(40, seed=0), seed=0)["test"]
    names = list(trajectories.VOWELS)
    items = []
    for k in range(count):
        spk = speakers[k % len(speakers)]
        vowel = names[(k // len(speakers) + k) % len(names)]
        item = trajectories.sustained_vowel(vowel, f0=spk.f0_hz, vtl_factor=spk.vtl_factor, seed=seed + k)
        items.append(dict(item, name=f"{spk.speaker_id}/{vowel}"))
    return items


def measure(wav, hop: int, rate: int, edge: int = 6) -> np.ndarray:
    """[f0, f1, f2, f3] (Hz) of a steady signal: medians over its frames without ``edge`` at each end."""
    n = 1 + len(wav) // hop
    f0, voiced = attributes.pitch(wav, sample_rate=rate, fps=rate / hop, n_frames=n)
    forms = attributes.formants(wav, sample_rate=rate, fps=rate / hop, n_frames=n, voiced=voiced, n_formants=3)
    values = np.column_stack([f0, forms])[edge : n - edge]
    with np.errstate(all="ignore"):
        return np.array([np.nanmedian(v) if np.any(np.isfinite(v)) else np.nan for v in values.T])


def _world(wav, rate: int, f0_target: float):
    try:
        import pyworld
    except ImportError:
        return None
    x = np.ascontiguousarray(wav, np.float64)
    f0, t = pyworld.harvest(x, rate, f0_floor=F0_RANGE[0], f0_ceil=F0_RANGE[1])
    sp, ap = pyworld.cheaptrick(x, f0, t, rate), pyworld.d4c(x, f0, t, rate)
    return pyworld.synthesize(np.where(f0 > 0, f0_target, 0.0), sp, ap, rate)


def transformation_rows(model: sfe.SourceFilterModel, settings: dict, log=print) -> list[dict]:
    """Table 3.3 form on the test vowels; one row per (factor, method), mean ± std over vowels x targets."""
    hop, rate = int(model.audio["hop"]), int(model.audio["sample_rate"])
    vowels = test_vowels(int(settings["eval_vowels"]))
    per = {}
    for item in vowels:
        wav = item["wav"]
        reference = measure(wav, hop, rate)
        mean, _ = model.encode(np.abs(np.asarray(model.stft(wav))) ** 2)
        phase = np.angle(np.asarray(model.stft(wav)))
        for i, factor in enumerate(FACTORS):
            for y in np.linspace(*TARGET_RANGES[factor], int(settings["eval_targets"])):
                latents = {
                    "Proposed": model.edit_latents(mean, {factor: y}),
                    "VAE baseline": model.baseline_latents(mean, factor, item["values"][i], y),
                }
                method = "griffin_lim" if factor == "f0" else "original"
                outputs = {name: model.resynthesize(z, phase, len(wav), method=method) for name, z in latents.items()}
                if factor == "f0":
                    world = _world(wav, rate, y)
                    if world is not None:
                        outputs["WORLD"] = world
                for name, out in outputs.items():
                    got = measure(out, hop, rate)
                    delta = {f"d{f}": 100.0 * abs(got[j] - reference[j]) / reference[j] for j, f in enumerate(FACTORS)}
                    delta[f"d{factor}"] = 100.0 * abs(got[i] - y) / y
                    per.setdefault((factor, name), []).append(delta)
    log(f"[avrep] source-filter transformation: {len(vowels)} test vowels x {settings['eval_targets']} targets")
    metrics = [f"d{f}" for f in FACTORS]
    out = []
    for (factor, method), rows in per.items():
        # the median too: a pitch tracker's octave error (50 % or 100 %) dominates a mean over 100 signals
        medians = {f"{k}_median": float(np.nanmedian([r[k] for r in rows])) for k in metrics}
        out.append({"factor": factor, "method": method, **summarize_rows(rows, metrics), **medians})
    return out


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white) / np.sqrt(np.maximum(np.arange(n // 2 + 1), 1.0))  # 1/f power: pink
    return np.fft.irfft(spectrum, n)


def gpe_utterances(count: int, seconds: float, hop: int, seed: int = 0) -> list[dict]:
    """Synthetic utterances with a known, smooth f0 (90-260 Hz) over a random vowel of a random speaker."""
    rng = np.random.default_rng([seed, 36])
    names = list(trajectories.VOWELS)
    items = []
    for k in range(count):
        n = int(seconds * 16000 / hop)
        knots = rng.uniform(90.0, 260.0, 6)
        f0 = np.interp(np.linspace(0, 5, n), np.arange(6), knots)
        vtl = rng.uniform(0.95, 1.2)
        f1, f2, f3 = (v * vtl for v in trajectories.VOWELS[names[rng.integers(len(names))]])
        items.append(dict(wav=trajectories.synthesize_tracks(f0, f1, f2, f3, hop=hop, seed=seed + k), f0=f0))
    return items


def _swipe(wav, rate: int, hop: int):
    try:
        import pysptk
    except ImportError:
        return None
    return pysptk.swipe(
        np.ascontiguousarray(wav, np.float64), rate, hop, min=F0_RANGE[0], max=F0_RANGE[1], threshold=0.0, otype="f0"
    )


def gross_pitch_error_rows(model: sfe.SourceFilterModel, settings: dict, log=print) -> list[dict]:
    hop, rate = int(model.audio["hop"]), int(model.audio["sample_rate"])
    items = gpe_utterances(int(settings["gpe_utterances"]), float(settings["gpe_seconds"]), hop)
    rng = np.random.default_rng(7)
    errors: dict = {}
    for item in items:
        clean, truth = item["wav"], item["f0"]
        n = len(truth)
        for kind in ("white", "pink"):
            noise = _noise(kind, len(clean), rng)
            for snr in settings["gpe_snrs"]:
                scale = np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10.0 ** (snr / 10.0))
                noisy = clean + scale * noise
                estimates = {
                    "Proposed(p)": model.estimate_f0(noisy),
                    "Proposed(z)": model.estimate_f0(noisy, subspace=False),
                }
                f0, _, _ = librosa.pyin(
                    noisy / np.max(np.abs(noisy)),
                    fmin=F0_RANGE[0],
                    fmax=F0_RANGE[1],
                    sr=rate,
                    frame_length=1024,
                    hop_length=hop,
                    fill_na=None,
                )
                estimates["pYIN"] = f0
                swipe = _swipe(noisy, rate, hop)
                if swipe is not None:
                    estimates["SWIPE"] = swipe
                for name, est in estimates.items():
                    est = np.asarray(est, np.float64)[:n]
                    rel = np.abs(np.nan_to_num(est, nan=0.0) - truth[: len(est)]) / truth[: len(est)]
                    errors.setdefault((kind, int(snr), name), []).append(rel)
    log(f"[avrep] gross pitch error: {len(items)} utterances x {len(settings['gpe_snrs'])} SNRs x white / pink")
    rows = []
    for (kind, snr, name), rels in errors.items():
        rel = np.concatenate(rels)
        rows.append(
            {
                "noise": kind,
                "snr_db": snr,
                "method": name,
                **{f"pe_{int(100 * lam)}": 100.0 * float(np.mean(rel >= lam)) for lam in PE_THRESHOLDS},
            }
        )
    return rows


def gpe_figure(rows: list[dict], path: str, run: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = sorted({r["noise"] for r in rows})
    fig, axes = plt.subplots(len(noises), len(PE_THRESHOLDS), figsize=(12, 3.2 * len(noises)), squeeze=False)
    for a, kind in enumerate(noises):
        for b, lam in enumerate(PE_THRESHOLDS):
            ax = axes[a, b]
            for method in sorted({r["method"] for r in rows}):
                pts = sorted(
                    (r["snr_db"], r[f"pe_{int(100 * lam)}"])
                    for r in rows
                    if r["noise"] == kind and r["method"] == method
                )
                ax.plot(*zip(*pts), marker="o", ms=3, label=method)
            ax.set(title=f"{kind} noise, lambda = {int(100 * lam)} %", xlabel="SNR (dB)", ylabel="PE (%)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{run}: gross pitch error against SNR (form of [Sadok-thesis] Fig. 3.6)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_run(run_dir: str, out_dir: str, *, log=print) -> dict[str, str]:
    """Every source-filter output of one run into ``out_dir``; returns {output: path}."""
    run = os.path.basename(os.path.normpath(run_dir))
    model = sfe.load(run_dir)
    settings = _settings(model.loaded.config)
    written = {}
    rows = retained_variance_rows(model)
    written["retained_variance"] = write_table(
        out_dir,
        f"{run}_sf_retained_variance",
        "Cumulative variance (%) retained by M_i components (form of [Sadok-thesis] Table 3.1)",
        rows,
        ("M",),
        [(f, f, 1) for f in FACTORS],
        [
            f"Subspaces learnt from the labelled sweeps (data_pipelines.synthav.trajectories) through {run}'s encoder; "
            "the last row: the M_i kept (>= 80 % of the variance). Thesis (WSJ0 VAE, Soundgen): f0 33/59/78/90, "
            "f1 81/87/90/92, f2 39/70/88/93, f3 48/73/83/87 for M = 1..4."
        ],
    )[0]
    ortho = orthogonality_outputs(model, out_dir, run)
    written["orthogonality"] = ortho["path"]
    log(
        f"[avrep] {run}: M_i = {[model.subspaces[f].dim for f in FACTORS]}; largest |cross-factor dot product| "
        f"{ortho['max_cross']:.2f}"
    )
    rows = transformation_rows(model, settings, log)
    written["transformation"] = write_table(
        out_dir,
        f"{run}_sf_transformation",
        "Transformation of f0 and formants on SynthAV test vowels (form of [Sadok-thesis] Table 3.3)",
        rows,
        ("factor", "method"),
        [(f"d{f}", f"δ{f} (%) ↓", 1) for f in FACTORS] + [(f"d{f}_median", f"median δ{f}", 1) for f in FACTORS],
        [
            "Mean ± std over test vowels x targets (n). The modified factor's column is the accuracy "
            "|measured - target| / target; the others are the disentanglement |measured - measured on the input| / "
            "measured on the input. Targets evenly spaced over Table 3.2's ranges (f0 100-300, f1 300-900, f2 "
            "1100-2700, f3 2200-3200 Hz). Extractors: pYIN (f0), LPC roots (F1-F3), median over central frames. "
            "Waveforms from the decoded power with the input's phase (f0 rows: Griffin-Lim, 64 iterations). "
            "VAE baseline: Hsu et al. latent arithmetic "
            "with the true source value. WORLD (pyworld, harvest + cheaptrick + d4c) for f0 only, as in the thesis. "
            "No NISQA column (its model cannot be downloaded here)."
        ],
    )[0]
    rows = gross_pitch_error_rows(model, settings, log)
    path = os.path.join(out_dir, f"{run}_sf_gross_pitch_error.csv")
    write_csv(path, rows, ["noise", "snr_db", "method", *(f"pe_{int(100 * lam)}" for lam in PE_THRESHOLDS)])
    gpe_figure(rows, os.path.join(out_dir, f"{run}_sf_gross_pitch_error.png"), run)
    written["gross_pitch_error"] = path
    return written
