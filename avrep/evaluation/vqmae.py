"""VQ-MAE evaluation ([Sadok-thesis] Ch. 5 and App. C; keys: docs/REFERENCES.md).

Fine-tuned runs (task ``vqmae_finetune``, one per fold): every kept checkpoint is scored on the fold's
validation speakers and the best one (highest validation accuracy; the later one on ties) is scored once
on the fold's test speakers. An utterance is classified from the mean of the class probabilities of the
windows that cover it (windows of the training length at 0, T, 2T, ... plus one ending at its last frame;
one wrap-padded window if it is shorter). Accuracy, macro F1 and weighted F1 (the authors' code reports
weighted F1) per fold; the table gives mean ± std over folds. The authors' code instead reported the
best *test* accuracy over epochs, which selects the model on the test fold.

Pre-trained runs (task ``vqmae``): reconstruction against the masking ratio ([Sadok-thesis] Fig. C.1). The first window
of each of ``count`` test utterances is masked at ratio r (both modalities for VQ-MAE-AV); masked tokens
take the most likely code, visible ones keep theirs; the index grids go through the frozen tokenizers'
decoders. Visual: PSNR of the frames against the original frames. Audio: SI-SDR of the waveform rebuilt
with the original phase against the original waveform (the thesis gives "SDR" with Griffin-Lim; the
original phase isolates the model's error from phase retrieval). Masked-token accuracy at each ratio too.
"""

from __future__ import annotations

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import f1_score

from avrep import audio as audio_lib
from avrep import runs
from avrep.evaluation import metrics as metrics_lib
from avrep.evaluation.sequence import batched_apply, window_starts
from avrep.evaluation.tables import summarize_rows, write_csv
from avrep.models.vqmae import VQMAEAV, masked_accuracy, untokenize_audio, untokenize_visual
from data_pipelines import registry
from data_pipelines.sources import open_source
from data_pipelines.spec import DataError, aligned_frames, clock_frames, decode_speech, decode_utterance

RATIOS = tuple(round(0.1 * i, 1) for i in range(10))


def _utterance_windows(record: dict, keys: tuple[str, ...], t: int) -> dict[str, np.ndarray]:
    """{key: [windows, r * t, ...]}: the windows covering one cached utterance (see the module doc)."""
    n = clock_frames(record)
    starts = window_starts(n, t) if n >= t else [0]
    out = {}
    frames = (np.asarray(starts)[:, None] + np.arange(t)[None, :]) % n
    for key in keys:
        out[key] = record[key][aligned_frames(frames, len(record[key]) // n)]
    return out


class FinetunedModel:
    """A fine-tuning run (``model``: its latest checkpoint, loaded): its task, its fold's validation and test
    utterances (as windows)."""

    def __init__(self, model, run_dir: str, *, batch: int = 32):
        self.model, self.run_dir = model, run_dir
        self.config = model.config
        self.task = model.task
        caches = self.task.split_caches(run_dir)
        self.folds = self.task.folds(caches)
        self.batch = batch
        keys = self.task.pipeline.modalities
        t = self.task.pipeline.frames_per_example
        self.sets = {}
        for part in ("validation", "test"):
            view = self.task.fold_source(caches, self.folds[part], part)
            windows, owner, labels = collections.defaultdict(list), [], []
            for i in range(len(view)):
                record = view[i]
                w = _utterance_windows(record, keys, t)
                for key, v in w.items():
                    windows[key].append(v)
                owner += [i] * len(next(iter(w.values())))
                labels.append(int(record[self.task.label]))
            self.sets[part] = (
                {k: np.concatenate(v) for k, v in windows.items()},
                np.asarray(owner),
                np.asarray(labels),
            )
        self._probs = jax.jit(lambda v, b: {"p": jax.nn.softmax(self.task.logits(v, b), -1)})

    def predict(self, variables, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class, true class) per utterance of ``part``."""
        windows, owner, labels = self.sets[part]
        probs = batched_apply(self._probs, variables, windows, self.batch)["p"]
        summed = np.zeros((len(labels), probs.shape[-1]))
        np.add.at(summed, owner, probs)
        return summed.argmax(-1), labels

    def evaluate(self) -> dict:
        """The fold's row: selected step, validation accuracy, test accuracy and F1 (%)."""
        best = None
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.model.variables)
        for step in runs.checkpoint_steps(self.run_dir):
            variables = (
                self.model.variables
                if step == self.model.step
                else runs.restore_variables(self.run_dir, abstract, step)
            )
            pred, true = self.predict(variables, "validation")
            accuracy = float(np.mean(pred == true))
            if best is None or accuracy >= best[0]:
                best = (accuracy, step, variables)
        val_accuracy, step, variables = best
        pred, true = self.predict(variables, "test")
        ft = self.config.finetune
        return {
            "model": self.task.display_name,
            "pretrain": "✓" if ft.get("pretrained") else "✗",
            "encoder": "frozen" if ft.freeze_encoder else "fine-tuned",
            "pooling": str(ft.pooling),
            "fold": int(ft.fold),
            "folds": int(ft.num_folds),
            "step": step,
            "val_accuracy": 100 * val_accuracy,
            "accuracy": 100 * float(np.mean(pred == true)),
            "f1": 100 * f1_score(true, pred, average="macro"),
            "f1_weighted": 100 * f1_score(true, pred, average="weighted"),
            "test_utterances": len(true),
            "test_speakers": len(self.folds["test"]),
        }


FOLD_METRICS = ("accuracy", "f1", "f1_weighted", "val_accuracy")
FOLD_KEYS = ("model", "pretrain", "encoder", "pooling")


def aggregate_folds(rows: list[dict]) -> list[dict]:
    """Per-fold rows -> one row per (model, pretrain, encoder, pooling): mean ± std over its folds."""
    groups = collections.defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in FOLD_KEYS)].append(r)
    out = []
    for key, group in groups.items():
        folds = {r["folds"] for r in group}
        row = dict(zip(FOLD_KEYS, key), **summarize_rows(group, FOLD_METRICS))
        row["folds"] = f"{len(group)} of {'/'.join(map(str, sorted(folds)))}"
        out.append(row)
    return out


# ------------------------------------------------------------------------- reconstruction vs masking


def _predicted_grids(module, variables, x: tuple, ratio, key):
    """Index grids with masked tokens replaced by the model's most likely codes."""
    out = module.apply(variables, *x, mask_ratio=ratio, all_logits=True, rngs={"mask": key})
    grids, accuracy = {}, {}
    names = ("audio", "visual") if isinstance(module, VQMAEAV) else tuple(m for m in ("audio", "visual") if m in out)
    for name, grid in zip(names, x):
        o = out[name]  # all_logits: target_mask is the masked tokens
        tokens = jnp.where(o["target_mask"][..., None], jnp.argmax(o["logits"], -1), o["targets"])
        accuracy[name] = jnp.where(jnp.any(o["target_mask"]), masked_accuracy(o), jnp.nan)  # nan: none masked
        if name == "audio":
            grids[name] = untokenize_audio(tokens, grid.shape[2], module.audio_patch_time, module.audio_patch_freq)
        else:
            grids[name] = untokenize_visual(
                tokens, grid.shape[2], grid.shape[3], module.visual_patch_time, module.visual_patch_size
            )
    return grids, accuracy


def reconstruction_curve(model, run_dir: str, *, count: int = 24, ratios=RATIOS, seed: int = 0) -> list[dict]:
    """Rows {model, run, ratio, psnr, si_sdr, accuracy_*} of a pre-training run (see the module doc)."""
    config, task = model.config, model.task
    split = str(config.data.eval_split)
    cache = task.index_cache(run_dir, split)
    source = open_source(config.data.name, split, config.data.data_dir)
    t, rate, hop = task.pipeline.frames_per_example, task.rate, int(config.audio["hop"])
    keys = task.pipeline.modalities
    n = min(count, len(cache))
    records = [cache[i] for i in range(n)]
    x = tuple(np.stack([_utterance_windows(r, keys, t)[k][0] for r in records]).astype(np.int32) for k in keys)
    read = decode_utterance if "visual" in task.inputs else decode_speech  # audio only: the video is not read
    originals = [read(source[r["record"]], hop, f"{source.description}: record {r['record']}") for r in records]
    apply = jax.jit(lambda v, xs, ratio, key: _predicted_grids(task.module, v, xs, ratio, key))
    decode = {
        m: jax.jit(lambda g, m=m: task.tokenizers.decode_indices(m, g.reshape(-1, *g.shape[2:]))) for m in task.inputs
    }
    n_fft, window = int(config.audio["n_fft"]), str(config.audio["window"])
    rows = []
    for ratio in ratios:
        grids, accuracy = jax.device_get(apply(model.variables, x, jnp.float32(ratio), jax.random.key(seed)))
        row = {
            "model": task.display_name,
            "run": os.path.basename(os.path.normpath(run_dir)),
            "ratio": f"{ratio:.1f}",
            **{f"accuracy_{m}": 100 * float(a) for m, a in accuracy.items()},
        }
        per_clip = [{} for _ in range(n)]
        if "visual" in grids:
            frames = np.asarray(decode["visual"](grids["visual"])).reshape(n, t, *originals[0]["video"].shape[1:])
            for i, utt in enumerate(originals):
                ref = utt["video"][(np.arange(t) % len(utt["video"]))].astype(np.float32) / 255.0
                per_clip[i]["psnr"] = float(
                    np.mean(metrics_lib.image_metrics(ref, np.clip(frames[i] + 0.5, 0.0, 1.0), data_range=1.0)["psnr"])
                )
        if "audio" in grids:
            power = np.asarray(decode["audio"](grids["audio"])).reshape(n, rate * t, -1)
            for i, utt in enumerate(originals):
                frames_a = rate * t
                length = (frames_a - 1) * hop
                wav = np.resize(utt["wav"], max(length, len(utt["wav"])))[:length]  # wraps a short clip
                spec = audio_lib.stft(
                    jnp.asarray(wav),
                    n_fft=n_fft,
                    hop=hop,
                    window=window,
                    center=True,
                    pad_mode=str(config.audio["pad_mode"]),
                )[:frames_a]
                est = audio_lib.spectrogram_to_waveform(
                    jnp.asarray(power[i, : len(spec)]), jnp.angle(spec), hop=hop, window=window, length=length
                )
                per_clip[i]["si_sdr"] = metrics_lib.si_sdr(wav, np.asarray(est))
        metrics = [m for m in ("psnr", "si_sdr") if m in per_clip[0]]
        rows.append({**row, **summarize_rows(per_clip, metrics)})
    return rows


def curve_figure(rows: list[dict], path: str) -> None:
    """[Sadok-thesis] Fig. C.1: visual PSNR and audio SI-SDR against the masking ratio, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    runs = collections.defaultdict(list)
    for r in rows:
        runs[(r["model"], r["run"])].append(r)
    for ax, metric, label in ((axes[0], "psnr", "visual PSNR (dB)"), (axes[1], "si_sdr", "audio SI-SDR (dB)")):
        for (model, run), rs in runs.items():
            if metric in rs[0]:
                ax.plot(
                    [float(r["ratio"]) * 100 for r in rs], [r[metric] for r in rs], marker="o", label=f"{model} [{run}]"
                )
        ax.set_xlabel("masking ratio (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------- linear-probe curve

PROBE_STEPS = (0, 400, 800, 1600, 3200)
PROBE_COLUMNS = (
    "step",
    "probe_accuracy",
    "probe_accuracy_std",
    "probe_f1",
    "chance",
    "masked_accuracy_audio",
    "masked_accuracy_visual",
    "hyperparameters",
)


def _pooled_encoder_outputs(module, variables, inputs: tuple) -> jax.Array:
    """[B, D]: the unmasked encoder's tokens mean-pooled per modality, beside its global / [CLS] tokens."""
    out = module.apply(variables, *inputs, method="encode")
    parts = [jnp.mean(z, axis=1) for _, z in sorted(out["tokens"].items())]
    for name in ("global", "cls"):  # VQ-MAE-AV's pooled global tokens; the unimodal models' [CLS]
        if name in out:
            parts += [v.reshape(v.shape[0], -1) for v in jax.tree.leaves(out[name])]  # in key order
    return jnp.concatenate(parts, axis=-1)


def _masked_token_hits(module, variables, inputs: tuple, ratio, key) -> dict[str, jax.Array]:
    """{modality: [B, 2]}: per example, masked indices predicted right (most likely code) and masked indices."""
    out = module.apply(variables, *inputs, mask_ratio=ratio, all_logits=True, rngs={"mask": key})
    hits = {}
    for name in ("audio", "visual"):
        if name in out:
            o = out[name]
            right = jnp.argmax(o["logits"], -1) == o["targets"]  # per index of each token
            mask = jnp.broadcast_to(o["target_mask"][..., None], right.shape)  # as masked_accuracy counts
            per_example = lambda x: x.reshape(x.shape[0], -1).sum(-1)  # noqa: E731
            hits[name] = jnp.stack([per_example(right & mask), per_example(mask)], axis=-1)
    return hits


class LabelledWindows:
    """A labelled corpus seen by a pre-training run's tokenizers: every utterance of ``splits`` as windows of the
    run's length, with its emotion and speaker (the index grids are cached in ``cache_dir``, shared with the
    fine-tuning runs of the same tokenizers)."""

    def __init__(
        self, run_dir: str, corpus: str, data_dir: str, cache_dir: str, splits=("train", "validation", "test")
    ):
        from avrep.tasks import build_task  # evaluation -> tasks

        config = runs.read_config(run_dir)
        if config.get("task") != "vqmae":
            raise ValueError(f"{run_dir}: a {config.get('task')!r} run; the probe needs a VQ-MAE pre-training run")
        config.data.name, config.data.data_dir, config.data.feature_cache_dir = corpus, data_dir, cache_dir
        registry.prepare(corpus, data_dir)  # SynthAV is generated if absent, as train.py does
        self.run_dir, self.config, self.task = run_dir, config, build_task(config)
        keys = self.task.pipeline.modalities
        t = self.task.pipeline.frames_per_example
        windows, owner, first, emotions, speakers = collections.defaultdict(list), [], [], [], []
        for split in splits:
            cache = self.task.index_cache(run_dir, split)
            for i in range(len(cache)):
                record = cache[i]
                if "emotion" not in record or "speaker" not in record:
                    raise DataError(f"{cache.description}: utterance {i} has no emotion / speaker label for the probe")
                w = _utterance_windows(record, keys, t)
                first.append(len(owner))
                for key, v in w.items():
                    windows[key].append(v)
                owner += [len(emotions)] * len(next(iter(w.values())))
                emotions.append(int(record["emotion"]))
                speakers.append(str(record["speaker"]))
        self.windows = {k: np.concatenate(v) for k, v in windows.items()}
        self.first = {k: v[np.asarray(first)] for k, v in self.windows.items()}  # one window per utterance
        self.owner, self.emotions, self.speakers = np.asarray(owner), np.asarray(emotions), np.asarray(speakers)

    def variables(self, step: int):
        """The run's variables at ``step``; step 0 is the run's initial (random) weights, drawn as training does."""
        if step == 0:
            init_rng, _ = jax.random.split(jax.random.key(int(self.config.seed)))
            return jax.jit(self.task.init_variables)(init_rng, self.task.dummy_batch())
        abstract = jax.eval_shape(self.task.init_variables, jax.random.key(0), self.task.dummy_batch())
        return runs.restore_variables(self.run_dir, abstract, step)


def linear_probe_curve(
    labelled: LabelledWindows,
    steps=PROBE_STEPS,
    *,
    ratio: float = 0.5,
    seed: int = 0,
    batch: int = 32,
    log=print,
) -> list[dict]:
    """One row per pre-training step: person-independent emotion accuracy of an MLR on the frozen encoder's
    pooled tokens (averaged over each utterance's windows), with the shared protocol of
    ``avrep.evaluation.emotion`` (5 speaker-disjoint folds, C chosen by speaker-disjoint inner CV on the training
    folds), and the masked-token accuracy at masking ratio ``ratio`` on the first window of every utterance
    (speakers the pre-training never saw)."""
    from avrep.evaluation.emotion import evaluate_emotion

    available = set(runs.checkpoint_steps(labelled.run_dir))
    missing = [s for s in steps if s and s not in available]
    if missing:
        raise ValueError(
            f"{labelled.run_dir}: no checkpoint at step(s) {missing} (kept: {sorted(available)}); train it with "
            f"--config.train.checkpoint_every and --config.train.max_checkpoints_to_keep that keep them"
        )
    module, task = labelled.task.module, labelled.task
    pooled = jax.jit(lambda v, b: {"z": _pooled_encoder_outputs(module, v, task.model_inputs(b))})
    hits = jax.jit(lambda v, b: _masked_token_hits(module, v, task.model_inputs(b), ratio, jax.random.key(seed)))
    n = len(labelled.emotions)
    rows = []
    for step in steps:
        variables = labelled.variables(step)
        z = batched_apply(pooled, variables, labelled.windows, batch)["z"]
        features = np.zeros((n, z.shape[-1]))
        np.add.at(features, labelled.owner, z)
        features /= np.bincount(labelled.owner, minlength=n)[:, None]
        (probe,) = evaluate_emotion(
            {"encoder": features},
            {"category": labelled.emotions},
            labelled.speakers,
            seed=seed,
            settings=("PI",),
            classifiers=("mlr",),
        )
        counts = batched_apply(hits, variables, labelled.first, batch)
        row = {
            "step": step,
            "probe_accuracy": 100 * probe["accuracy"],
            "probe_accuracy_std": 100 * probe["accuracy_std"],
            "probe_f1": 100 * probe["f1"],
            "chance": 100 * probe["chance"],
            "hyperparameters": probe["hyperparameters"],
        }
        for m in ("audio", "visual"):
            if m in counts:
                right, masked = counts[m].sum(0)
                row[f"masked_accuracy_{m}"] = 100 * float(right) / max(int(masked), 1)
        log(f"[avrep] probe step {step}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "hyperparameters"))
        rows.append(row)
    return rows


def write_probe_table(out_dir: str, rows: list[dict], labelled: LabelledWindows, ratio: float) -> str:
    """``linear_probe.csv`` and ``linear_probe.md`` in ``out_dir``; returns the Markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    write_csv(os.path.join(out_dir, "linear_probe.csv"), rows, PROBE_COLUMNS)
    lines = [
        f"# Linear probe of {labelled.task.display_name} ({os.path.basename(os.path.normpath(labelled.run_dir))}) "
        f"on {labelled.config.data.name}",
        "",
        f"| step | probe accuracy (%) | probe macro F1 (%) | masked-token accuracy at {ratio:.0%}: audio / visual "
        "(%) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        masked = " / ".join(f"{r[k]:.2f}" for k in ("masked_accuracy_audio", "masked_accuracy_visual") if k in r)
        lines.append(
            f"| {r['step']} | {r['probe_accuracy']:.1f} ± {r['probe_accuracy_std']:.1f} | {r['probe_f1']:.1f} | "
            f"{masked} |"
        )
    lines += [
        "",
        f"{len(labelled.emotions)} utterances of {len(set(labelled.speakers))} speakers, none seen in pre-training; "
        f"chance (majority class) {rows[0]['chance']:.1f} %. Probe: MLR on the frozen encoder's tokens mean-pooled "
        "per modality (and its global tokens), averaged over each utterance's windows; 5 speaker-disjoint folds, "
        "mean ± std; C chosen by speaker-disjoint inner CV on the training folds. Step 0: the run's initial weights.",
    ]
    path = os.path.join(out_dir, "linear_probe.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m avrep.evaluation.vqmae",
        description="Linear-probe curve of a VQ-MAE pre-training run: person-independent emotion accuracy of its "
        "frozen encoder at several checkpoints, and its masked-token accuracy on the labelled speakers.",
    )
    parser.add_argument("--probe", required=True, help="the pre-training run directory (e.g. W/vqmae_av)")
    parser.add_argument("--corpus", default="synthav/vqmae", help="the labelled corpus (default: synthav/vqmae)")
    parser.add_argument("--data_dir", default="", help="its data directory (default: the run's data.data_dir)")
    parser.add_argument(
        "--cache_dir", default="", help="its index caches (default: index_cache beside the run, as the pipeline)"
    )
    parser.add_argument("--splits", default="train,validation,test", help="the labelled corpus's splits to use")
    parser.add_argument("--steps", default=",".join(map(str, PROBE_STEPS)), help="checkpoint steps (0: random)")
    parser.add_argument("--ratio", type=float, default=0.5, help="masking ratio of the masked-token accuracy")
    parser.add_argument("--out", default="", help="output directory (default: eval beside the run)")
    args = parser.parse_args(argv)
    run_dir = os.path.abspath(args.probe)
    parent = os.path.dirname(run_dir)
    data_dir = args.data_dir or str(runs.read_config(run_dir).data.data_dir)
    cache_dir = args.cache_dir or os.path.join(parent, "index_cache")
    labelled = LabelledWindows(run_dir, args.corpus, data_dir, cache_dir, splits=tuple(args.splits.split(",")))
    rows = linear_probe_curve(labelled, [int(s) for s in args.steps.split(",")], ratio=args.ratio)
    print(open(write_probe_table(args.out or os.path.join(parent, "eval"), rows, labelled, args.ratio)).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
