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
from avrep.evaluation.tables import summarize_rows
from avrep.models.vqmae import VQMAEAV, masked_accuracy, untokenize_audio, untokenize_visual
from data_pipelines.sources import open_source
from data_pipelines.spec import aligned_frames, decode_utterance, feature_field

RATIOS = tuple(round(0.1 * i, 1) for i in range(10))


def _utterance_windows(record: dict, keys: tuple[str, ...], t: int) -> dict[str, np.ndarray]:
    """{key: [windows, r * t, ...]}: the windows covering one cached utterance (see the module doc)."""
    n = len(record[feature_field("visual")])
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
    originals = [
        decode_utterance(source[r["record"]], hop, f"{source.description}: record {r['record']}") for r in records
    ]
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
