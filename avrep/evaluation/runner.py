"""Evaluates every run found in a workdir and writes the metric tables into ``<workdir>/eval/``."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from avrep import runs
from avrep.evaluation import dvae as dvae_eval
from avrep.evaluation import enhancement as enhancement_eval
from avrep.evaluation import manipulation, resynthesis
from avrep.evaluation import vqmae as vqmae_eval
from avrep.evaluation.emotion import EmotionProtocol, run_emotion_evaluation
from avrep.evaluation.sequence import LATENTS, SequenceModel
from avrep.evaluation.tables import write_csv, write_table
from avrep.features.cache import feature_cache_dir
from avrep.runs import CHECKPOINT_SUBDIR
from avrep.tasks import load_checkpoint
from data_pipelines import registry
from data_pipelines.sources import open_source


@dataclasses.dataclass(frozen=True)
class Table:
    """A metric table: its file name, title, key columns, [(metric, header, digits)] and notes."""

    name: str
    title: str
    keys: tuple[str, ...]
    metrics: list[tuple[str, str, int]]
    notes: list[str]


AUDIO_TABLE = Table(
    "analysis_resynthesis_audio",
    "Analysis-resynthesis, audio (form of MDVAE paper Table 2)",
    ("model", "condition", "run"),
    [("stoi", "STOI ↑", 3), ("pesq", "PESQ (wb) ↑", 2), ("si_sdr", "SI-SDR (dB) ↑", 2)],
    [
        "Mean ± std over test utterances (speaker-disjoint test split). PESQ is wide-band (ITU-T P.862.2, "
        "16 kHz). 'original phase': inverse STFT of the reconstructed power with the input's phase; "
        "Griffin-Lim rows rebuild the phase from power alone (fast Griffin-Lim, momentum 0.99, random init "
        "with a fixed key). STFT: Hann window, n_fft 1024, centre zero-padding. Sequence models (MDVAE "
        "family) reconstruct whole utterances in windows of T frames (posterior means)."
    ],
)
VISUAL_TABLE = Table(
    "analysis_resynthesis_visual",
    "Analysis-resynthesis, visual (form of MDVAE paper Table 3)",
    ("model", "condition", "run"),
    [("mse", "MSE ↓", 4), ("psnr", "PSNR (dB) ↑", 2), ("scc", "SCC ↑", 3), ("ssim", "SSIM ↑", 3)],
    [
        "Mean ± std over test utterances of the per-utterance mean over frames. Pixels in [0, 1] (data range "
        "1). SSIM: Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, mean over RGB channels (Wang et al. "
        "2004). SCC: Laplacian high-pass then windowed correlation coefficient (8x8), as the sewar package."
    ],
)
SWAP_TABLE = Table(
    "analysis_transformation_synthesis",
    "Analysis-transformation-synthesis: one latent of B replaced by donor A's (form of MDVAE paper Fig. 8)",
    ("model", "latent", "run"),
    [
        (f"{a}_{m}", f"{a} {m.upper()}", 2 if m == "pcc" else 3)
        for a in manipulation.SWAP_ATTRIBUTES
        for m in ("pcc", "mae")
    ],
    [
        "Windows of T frames from the test split; every ordered pair (A, B), A != B (n pairs). PCC: Pearson "
        "correlation of time-centred attributes of the output and of the real donor A, pooled over pairs "
        "(high: the latent carries the attribute's dynamics); MAE on raw values (low: it sets the attribute's "
        "level). Row 'none': B decoded unchanged. Audio from Griffin-Lim (32 it.). Extractors: "
        "avrep.evaluation.attributes (pYIN pitch in Hz, LPC formants F1/F2 in Hz, loudness in dB, mouth and "
        "eye opening and head position measured on the rendered faces)."
    ],
)
DENOISE_TABLE = Table(
    "denoising",
    "Audiovisual denoising: PSNR / SSIM on the corrupted region (form of MDVAE paper Fig. 11)",
    ("model", "region", "variance"),
    [("psnr", "PSNR (dB) ↑", 2), ("ssim", "SSIM ↑", 3)],
    [
        "Sequences of 10 frames (the first frames of test utterances); frames 3-8 get N(0, variance) noise on "
        "pixels in [0, 1] (clipped) inside a box around the mouth or the eyes; audio clean. Mean ± std over "
        "sequences of the region's PSNR and mean SSIM map (Gaussian window, sigma 1.5). VQ-VAE-visual: the "
        "tokenizer alone."
    ],
)
FINETUNE_TABLE = Table(
    "emotion_finetuning",
    "Speech emotion recognition by fine-tuned VQ-MAE models, speaker-independent k-fold cross-validation "
    "(form of VQ-MAE thesis Tables 5.1, 5.2, 5.5)",
    vqmae_eval.FOLD_KEYS + ("folds",),
    [
        ("accuracy", "Accuracy (%) ↑", 1),
        ("f1", "F1 macro (%) ↑", 1),
        ("f1_weighted", "F1 weighted (%) ↑", 1),
        ("val_accuracy", "validation acc. (%)", 1),
    ],
    [
        "Mean ± std over folds (n). Each fold: its test speakers never seen in fine-tuning; the checkpoint is "
        "chosen on validation speakers carved from the training speakers (highest accuracy), then scored once "
        "on the test fold. An utterance's class: mean of the class probabilities of the windows covering it. "
        "Per-fold rows: emotion_finetuning_folds.csv. Chance on SynthAV: 12.5 % (8 emotions)."
    ],
)
CURVE_TABLE = Table(
    "reconstruction_vs_masking",
    "Reconstruction against the masking ratio (form of VQ-MAE thesis Fig. C.1)",
    ("model", "run", "ratio"),
    [
        ("psnr", "visual PSNR (dB) ↑", 2),
        ("si_sdr", "audio SI-SDR (dB) ↑", 2),
        ("accuracy_visual", "visual masked-token acc. (%)", 1),
        ("accuracy_audio", "audio masked-token acc. (%)", 1),
    ],
    [
        "First window of each test utterance (n), masked at the ratio (both modalities for VQ-MAE-AV); masked "
        "tokens take the most likely code, visible ones keep theirs, the frozen tokenizers decode the grids. "
        "Audio rebuilt with the original phase. Ratio 0 is the tokenizers' own reconstruction. Figure: "
        "reconstruction_vs_masking.png."
    ],
)
DVAE_TABLE = Table(
    "dvae_analysis_resynthesis",
    "Speech analysis-resynthesis by the DVAE family (form of [Lin-thesis] Table 7.1)",
    ("model", "condition", "run"),
    [("rmse", "RMSE ↓", 4), ("si_sdr", "SI-SDR (dB) ↑", 2), ("pesq", "PESQ (wb) ↑", 2), ("estoi", "ESTOI ↑", 3)],
    [
        "Mean ± std over test utterances (speaker-disjoint test split; each cut to a multiple of 0.25 s). "
        "Power spectrogram (sine window 1024, hop 256, centre padding) through the model with posterior means; "
        "waveform rebuilt with the original phase. RMSE: of the waveform, in units of its peak. PESQ wide-band, "
        "ESTOI (pystoi). 'generation mode': a scheduled-sampling SRNN fed its own past predictions. Checkpoint: "
        "lowest validation loss."
    ],
)
TABLES = (AUDIO_TABLE, VISUAL_TABLE, SWAP_TABLE, DENOISE_TABLE, FINETUNE_TABLE, CURVE_TABLE, DVAE_TABLE)
# The per-run resynthesis tables read ``Evaluation.split``: "test" (what is reported) or "validation" (what
# settings are chosen on, so that the test split is scored once). The other tables always read the test split.
SPLITS = ("test", "validation")
RESYNTHESIS_TABLES = (AUDIO_TABLE, VISUAL_TABLE, DVAE_TABLE)
# A 2-value MLP grid (the default 4-value one costs ~5 CPU minutes on SynthAV's 960 utterances).
EMOTION_PROTOCOL = EmotionProtocol(mlp_grid=(((128, 128), 1e-3), ((128, 128), 1e-1)), mlp_max_iter=200)


# Row order of the papers' tables (ablations first, the proposed model last); others after them.
PAPER_ORDER = (
    "VQ-VAE-audio",
    "VQ-VAE-visual",
    "original signal",
    "DSAE-audio",
    "DSAE-visual",
    "MDVAE",
    "VQ-DSAE-audio",
    "VQ-DSAE-visual",
    "VQ-JointMVAE",
    "VQ-MDVAE",
)


def _paper_order(row: dict) -> int:
    return PAPER_ORDER.index(row["model"]) if row["model"] in PAPER_ORDER else len(PAPER_ORDER)


def discover_runs(workdir: str) -> list[str]:
    """``workdir`` itself if it is a run, else its sub-directories that hold checkpoints."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir {workdir} does not exist")
    if os.path.isdir(os.path.join(workdir, CHECKPOINT_SUBDIR)):
        return [workdir]
    run_dirs = sorted(
        os.path.join(workdir, d)
        for d in os.listdir(workdir)
        if os.path.isdir(os.path.join(workdir, d, CHECKPOINT_SUBDIR))
    )
    if not run_dirs:
        raise FileNotFoundError(
            f"no trained run under {workdir} (expected {CHECKPOINT_SUBDIR}/ in it or in "
            f"its sub-directories); train first with `python train.py --workdir {workdir}`"
        )
    return run_dirs


@dataclasses.dataclass
class Evaluation:
    """What the per-run evaluators share: options, table rows, and per-utterance representations
    gathered across runs for the emotion table."""

    out_dir: str
    limit: int | None = None
    griffin_lim_iters: int = 32
    emotion_splits: tuple[str, ...] = ("train", "validation", "test")
    # Cross-corpus emotion recognition: the dataset (and its data_dir) whose utterances the emotion table uses
    # instead of each run's training corpus (e.g. w of a MEAD-trained model on RAVDESS, [MDVAE] Table 4).
    emotion_corpus: str | None = None
    emotion_data_dir: str | None = None
    swap_count: int = 8  # donors = recipients of the transformation experiment (count * (count - 1) pairs)
    denoise_count: int = 24  # test sequences of the denoising experiment
    split: str = "test"  # the split of the resynthesis tables (SPLITS)
    log: Callable[[str], None] = print
    rows: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    # representation name -> {utterance_id: vector}; labels: utterance_id -> {speaker, emotion, intensity}
    representations: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    labels: dict[str, dict] = dataclasses.field(default_factory=dict)
    emotion_datasets: dict[str, set] = dataclasses.field(default_factory=dict)  # "evaluated" / "trained": dataset names
    denoisers: list[SequenceModel] = dataclasses.field(default_factory=list)  # VQ runs that decode video

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split {self.split!r}: expected one of {SPLITS}")


def _run_name(run_dir: str) -> str:
    return os.path.basename(os.path.normpath(run_dir))


def _resynthesis_source(config, ev: Evaluation):
    """The utterances a resynthesis table scores: the run's evaluation split, or ``ev.split`` when it is not test."""
    split = str(config.data.eval_split) if ev.split == "test" else ev.split
    return open_source(config.data.name, split, config.data.data_dir)


def _figure_name(run: str, kind: str, ev: Evaluation) -> str:
    return os.path.join(ev.out_dir, f"{run}_{kind}.png" if ev.split == "test" else f"{run}_{kind}_{ev.split}.png")


def _for_split(table: Table, split: str) -> Table:
    """A resynthesis table as written for ``split``: a split other than test is named in its file name, title,
    notes and a column, so that a table made to choose settings is never read as a test result."""
    if split == "test" or table not in RESYNTHESIS_TABLES:
        return table
    return dataclasses.replace(
        table,
        name=f"{table.name}_{split}",
        title=f"{table.title}, {split.upper()} SPLIT (for choosing settings; not a test result)",
        keys=(*table.keys, "split"),
        notes=[note.replace("test ", f"{split} ") for note in table.notes],
    )


def _evaluate_vqvae(model, run_dir: str, ev: Evaluation) -> None:
    config = model.config
    source = _resynthesis_source(config, ev)
    name = model.task.display_name
    run = _run_name(run_dir)
    if config.model.modality == "audio":
        result = resynthesis.audio_resynthesis(model, source, limit=ev.limit, griffin_lim_iters=ev.griffin_lim_iters)
        for condition, summary in result["conditions"].items():
            model_name = "original signal" if condition.startswith("reference") else name
            ev.rows.setdefault(AUDIO_TABLE.name, []).append(
                {"model": model_name, "condition": condition, "run": run, "split": ev.split, **summary}
            )
        resynthesis.spectrogram_figure(
            result["example"], _figure_name(run, "spectrograms", ev), f"{name}: {source.description}"
        )
    else:
        result = resynthesis.visual_resynthesis(model, source, limit=ev.limit)
        ev.rows.setdefault(VISUAL_TABLE.name, []).append(
            {"model": name, "condition": "-", "run": run, "split": ev.split, **result["summary"]}
        )
        resynthesis.faces_figure(result["example"], _figure_name(run, "faces", ev), name)
    ev.log(f"[avrep] evaluated {run_dir} (step {model.step})")


def _evaluate_sequence(model, run_dir: str, ev: Evaluation) -> None:
    """MDVAE family: analysis-resynthesis rows, and the static latent w for the emotion table."""
    seq = SequenceModel(model)
    config, run = model.config, _run_name(run_dir)
    source = open_source(config.data.name, config.data.eval_split, config.data.data_dir)
    utts, xs, skipped = seq.split_features(_resynthesis_source(config, ev), limit=ev.limit)
    if skipped:
        ev.log(f"[avrep] {run}: skipped {len(skipped)} {ev.split} utterance(s) shorter than {seq.t} frames")
    signals = [seq.to_signals(r) for r in seq.reconstruct(xs)]
    if "audio" in seq.outputs:
        wavs = [u["wav"] for u in utts]

        def reconstruct(batch, chunk):
            frames = 1 + batch.shape[1] // int(config.audio["hop"])
            recon = np.zeros((len(batch), frames, signals[0]["power"].shape[-1]), np.float32)
            valid = np.zeros(len(batch), np.int32)
            for row, i in enumerate(chunk):
                power = signals[i]["power"]
                recon[row, : len(power)], valid[row] = power, len(power)
            return recon, valid

        ids = [u["utterance_id"] for u in utts]
        result = resynthesis.score_audio(wavs, reconstruct, config.audio, griffin_lim=False, ids=ids)
        for condition, summary in result["conditions"].items():
            ev.rows.setdefault(AUDIO_TABLE.name, []).append(
                {"model": seq.name, "condition": condition, "run": run, "split": ev.split, **summary}
            )
    if "visual" in seq.outputs:
        pairs = ((u["video"].astype(np.float32) / 255.0, s["video"]) for u, s in zip(utts, signals))
        result = resynthesis.score_video(pairs, ids=[u["utterance_id"] for u in utts])
        ev.rows.setdefault(VISUAL_TABLE.name, []).append(
            {"model": seq.name, "condition": "-", "run": run, "split": ev.split, **result["summary"]}
        )
        resynthesis.faces_figure(result["example"], _figure_name(run, "faces", ev), seq.name)
    if "w" in LATENTS[seq.family]:
        _collect_static_latents(seq, run_dir, ev)
    if seq.family == "mdvae":
        rows = manipulation.swap_experiment(seq, source, count=ev.swap_count)
        ev.rows.setdefault(SWAP_TABLE.name, []).extend(dict(r, model=seq.name, run=run) for r in rows)
        manipulation.interpolation_and_generation(seq, source, ev.out_dir, run)
    if "visual" in seq.outputs and seq.task.tokenizers is not None:
        ev.denoisers.append(seq)
    ev.log(f"[avrep] evaluated {run_dir} (step {model.step})")


def _collect_static_latents(seq: SequenceModel, run_dir: str, ev: Evaluation) -> None:
    """Utterance-level w (mean over the utterance's windows of the posterior mean) of every utterance of
    ``ev.emotion_splits``, for the emotion-recognition table."""
    config = seq.config
    name, data_dir = emotion_corpus(config, ev)
    vectors = {}
    for split in ev.emotion_splits:
        source = open_source(name, split, data_dir)
        if name == config.data.name:
            cache_dir = feature_cache_dir(seq.config, run_dir, split)
        else:  # another corpus's features, from this run's tokenizers: beside the run, never in its training cache
            check_same_setting(source, config)
            cache_dir = os.path.join(run_dir, "feature_cache_" + name.replace("/", "_"), split)
        meta, xs = seq.split_latent_inputs(source, cache_dir=cache_dir)
        missing = {"speaker", "emotion", "intensity"} - set(meta[0]) if meta else set()
        if missing:
            ev.log(f"[avrep] {source.description} has no {sorted(missing)} labels: no emotion table for it")
            return
        for m, latents in zip(meta, seq.encode_utterances(xs)):
            vectors[m["utterance_id"]] = latents["w"].mean(axis=0)
            ev.labels[m["utterance_id"]] = {k: m[k] for k in ("speaker", "emotion", "intensity")}
    key = f"{seq.name} w"
    if key in ev.representations:  # e.g. a model and its fine-tuning on the target corpus: told apart by run
        key = f"{seq.name} w [{_run_name(run_dir)}]"
    ev.representations[key] = vectors
    ev.emotion_datasets.setdefault("evaluated", set()).add(name)
    ev.emotion_datasets.setdefault("trained", set()).add(str(config.data.name))


def emotion_corpus(config, ev: Evaluation) -> tuple[str, str]:
    """(dataset, data_dir) whose utterances the emotion table uses: ``ev.emotion_corpus`` (cross-corpus) or the
    run's own corpus; the data_dir is ``ev.emotion_data_dir``, else the run's."""
    return ev.emotion_corpus or str(config.data.name), ev.emotion_data_dir or str(config.data.data_dir)


def check_same_setting(source, config) -> None:
    """Another corpus must be built in the run's setting (face size; the frozen tokenizers read its frames)."""
    video = np.asarray(source[0].get("video", ()))
    size = int(config.data.image_size)
    if video.ndim == 4 and video.shape[0] and video.shape[1:3] != (size, size):
        raise ValueError(
            f"--emotion_corpus: {source.description} has {video.shape[1]}x{video.shape[2]} faces, but the run "
            f"{config.get('name')} was trained on {size}x{size} ({config.data.name}): build the corpus in that setting"
        )


def _emotion_tables(ev: Evaluation) -> dict:
    """[MDVAE] Table 4 (+ the few-label curve) over the utterances every representation has."""
    ids = sorted(set.intersection(*(set(v) for v in ev.representations.values())))
    reps = {name: np.stack([v[i] for i in ids]) for name, v in ev.representations.items()}
    labels = {
        "category": np.array([ev.labels[i]["emotion"] for i in ids]),
        "intensity": np.array([ev.labels[i]["intensity"] for i in ids]),
    }
    speakers = np.array([ev.labels[i]["speaker"] for i in ids])
    evaluated = ", ".join(sorted({registry.title(n) for n in ev.emotion_datasets["evaluated"]}))
    trained = ", ".join(sorted({registry.title(n) for n in ev.emotion_datasets["trained"]}))
    _, _, paths = run_emotion_evaluation(
        ev.out_dir, reps, labels, speakers, dataset=evaluated, trained_on=trained, protocol=EMOTION_PROTOCOL
    )
    ev.log(f"[avrep] emotion recognition on {len(ids)} utterances of {ev.emotion_splits}: {paths}")
    return paths


def _evaluate_vqmae_pretraining(model, run_dir: str, ev: Evaluation) -> None:
    ev.rows.setdefault(CURVE_TABLE.name, []).extend(
        vqmae_eval.reconstruction_curve(model, run_dir, count=ev.limit or 24)
    )
    ev.log(f"[avrep] evaluated {run_dir} (step {model.step})")


def _evaluate_vqmae_finetuning(model, run_dir: str, ev: Evaluation) -> None:
    row = vqmae_eval.FinetunedModel(model, run_dir).evaluate()
    ev.rows.setdefault(FINETUNE_TABLE.name + "_folds", []).append(dict(row, run=_run_name(run_dir)))
    ev.log(
        f"[avrep] evaluated {run_dir}: fold {row['fold']}, step {row['step']} chosen on validation, "
        f"test accuracy {row['accuracy']:.1f} %"
    )


def _evaluate_dvae(model, run_dir: str, ev: Evaluation) -> None:
    """DVAE family: analysis-resynthesis rows from the best checkpoint on validation, and a figure of
    sequences generated from the prior."""
    best = runs.best_step(run_dir)
    if best != model.step:
        model = load_checkpoint(os.path.join(run_dir, CHECKPOINT_SUBDIR, str(best)))
    config, run = model.config, _run_name(run_dir)
    rows, example = dvae_eval.resynthesis_rows(model, _resynthesis_source(config, ev), limit=ev.limit)
    name = model.task.display_name
    ev.rows.setdefault(DVAE_TABLE.name, []).extend(
        dict(r, model=name, run=run, step=best, split=ev.split) for r in rows
    )
    resynthesis.spectrogram_figure(example, _figure_name(run, "spectrograms", ev), name)
    dvae_eval.generation_figure(model, os.path.join(ev.out_dir, f"{run}_generation.png"))
    ev.log(f"[avrep] evaluated {run_dir} (step {best}, lowest validation loss)")


def _evaluate_source_filter(model, run_dir: str, ev: Evaluation) -> None:
    """Source-filter VAE: its own tables and figures ([Sadok-thesis] Tables 3.1, 3.3, Figs. 3.5, 3.6 forms)."""
    from avrep.evaluation import source_filter_experiments  # deferred: librosa / matplotlib only when needed

    written = source_filter_experiments.evaluate_run(run_dir, ev.out_dir, log=ev.log)
    ev.log(f"[avrep] evaluated {run_dir} (source-filter): {sorted(written.values())}")


EVALUATORS: dict[str, Callable] = {
    "vqvae": _evaluate_vqvae,
    **{family: _evaluate_sequence for family in LATENTS},
    "vqmae": _evaluate_vqmae_pretraining,
    "vqmae_finetune": _evaluate_vqmae_finetuning,
    "dvae": _evaluate_dvae,
    "source_filter": _evaluate_source_filter,
}


NONFINITE_FILE = "nonfinite_outputs.csv"


def _report_nonfinite(ev: Evaluation) -> str | None:
    """A warning per table row whose model gave a non-finite output (its utterances' metrics are left out of
    the row's means and counted in its cells), and every such utterance listed in ``NONFINITE_FILE``."""
    listed = []
    for table in TABLES:
        for row in ev.rows.get(table.name, []):
            ids = row.get(resynthesis.NONFINITE)
            if not ids:
                continue
            where = f"{row.get('run', '?')} ({row['model']}, {row.get('condition', '-')})"
            shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
            ev.log(
                f"[avrep] WARNING {where}: non-finite model output for {len(ids)} of {row['n']} "
                f"{row.get('split', 'test')} utterance(s), left out of {table.name}: {shown}"
            )
            listed += [{"table": table.name, **row, "utterance": u} for u in ids]
    if not listed:
        return None
    path = os.path.join(ev.out_dir, NONFINITE_FILE)
    write_csv(path, listed, ["table", "run", "model", "condition", "utterance"])
    ev.log(f"[avrep] the {len(listed)} non-finite outputs are listed in {path}")
    return path


def evaluate_workdir(workdir: str, *, log: Callable[[str], None] = print, **options) -> dict[str, tuple[str, str]]:
    """Evaluates every run under ``workdir``; ``options`` are ``Evaluation`` fields (limit, swap_count, ...)."""
    run_dirs = discover_runs(workdir)  # before creating eval/, so a mistyped --workdir is not created
    ev = Evaluation(os.path.join(workdir, "eval"), log=log, **options)
    os.makedirs(ev.out_dir, exist_ok=True)
    for run_dir in run_dirs:
        model = load_checkpoint(run_dir)
        evaluator = EVALUATORS.get(model.config.get("task"))
        if evaluator is None:
            raise ValueError(
                f"{run_dir}: no evaluator for task {model.config.get('task')!r}; known: {sorted(EVALUATORS)}"
            )
        evaluator(model, run_dir, ev)
    written = {}
    nonfinite = _report_nonfinite(ev)
    if nonfinite:
        written["nonfinite_outputs"] = nonfinite
    if ev.denoisers:
        first = ev.denoisers[0].config
        source = open_source(first.data.name, first.data.eval_split, first.data.data_dir)
        ev.rows[DENOISE_TABLE.name] = manipulation.denoising_experiment(ev.denoisers, source, count=ev.denoise_count)
    if FINETUNE_TABLE.name + "_folds" in ev.rows:
        folds = ev.rows[FINETUNE_TABLE.name + "_folds"]
        ev.rows[FINETUNE_TABLE.name] = vqmae_eval.aggregate_folds(folds)
        write_csv(os.path.join(ev.out_dir, f"{FINETUNE_TABLE.name}_folds.csv"), folds, list(folds[0]))
    if CURVE_TABLE.name in ev.rows:
        vqmae_eval.curve_figure(ev.rows[CURVE_TABLE.name], os.path.join(ev.out_dir, f"{CURVE_TABLE.name}.png"))
    for table in TABLES:
        if table.name in ev.rows:
            rows = sorted(ev.rows[table.name], key=_paper_order)
            out = _for_split(table, ev.split)
            written[out.name] = write_table(ev.out_dir, out.name, out.title, rows, out.keys, out.metrics, out.notes)
            log(f"[avrep] wrote {written[out.name][0]}")
    if ev.representations:
        written["emotion"] = _emotion_tables(ev)
    if os.path.isfile(os.path.join(workdir, enhancement_eval.PLAN_FILE)):  # a speech-enhancement workdir
        written.update(enhancement_eval.evaluate_plan(workdir, ev.out_dir, log=log, limit=ev.limit))
    return written
