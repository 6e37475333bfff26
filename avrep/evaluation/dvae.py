"""Evaluation of the DVAE family on speech: analysis-resynthesis in the form of [Lin-thesis] Table 7.1, and
spectrograms generated from the learned prior (keys: docs/REFERENCES.md).

Analysis-resynthesis: each test utterance's power spectrogram (the training STFT: sine window, hop 256,
centre padding) goes through the model with the posterior means; the waveform is rebuilt from the
reconstructed power with the ORIGINAL phase. Condition "teacher-forced": the autoregressive models read
the data's past frames; a scheduled-sampling SRNN is also run in "generation mode" (its own past
predictions fed back, ``use_pred = 1``), the mode in which [Lin-thesis] Table 7.1 scores its AR models.
Metrics against the peak-normalised original: RMSE of the waveform (the thesis does not say in which
domain its RMSE is; ours is the waveform's, in units of the peak), SI-SDR (dB), wide-band PESQ, ESTOI.

Utterances are cut to a multiple of ``segment_seconds`` (at most that much is dropped from the end, so a
few lengths compile and no zero padding enters a model whose inference runs backward in time).
The checkpoint is the one with the lowest validation loss when the run logged one (``avrep.runs.best_step``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from avrep import audio as audio_lib
from avrep.evaluation import resynthesis
from data_pipelines.spec import speech_utterances

METRICS = ("rmse", "si_sdr", "pesq", "estoi")


def _power_fn(model, use_pred: float | None):
    """jit: (variables, wavs [B, L]) -> the model's reconstructed power [B, frames, bins]."""
    cfg, task = model.config.audio, model.task
    n_fft, hop, window, pad_mode = int(cfg["n_fft"]), int(cfg["hop"]), str(cfg["window"]), str(cfg["pad_mode"])
    kwargs = {} if use_pred is None else {"use_pred": use_pred}

    @jax.jit
    def power(variables, wavs):
        x = audio_lib.power_spectrogram(wavs, n_fft=n_fft, hop=hop, window=window, center=True, pad_mode=pad_mode)
        return jnp.exp(task.module.apply(variables, x, sample=False, **kwargs)["log_var"])

    return power


def segment_waveforms(
    config, source, *, limit: int | None, segment_seconds: float
) -> tuple[list[np.ndarray], list[str]]:
    """Peak-normalised test waveforms, each cut to a multiple of ``segment_seconds`` (shorter ones dropped), and
    their utterance ids."""
    seg = int(segment_seconds * int(config.audio.sample_rate))
    wavs, ids = [], []
    for utt in speech_utterances(source, int(config.audio.hop)):
        if limit is not None and len(wavs) == limit:
            break
        if utt["wav"].size >= seg:
            wavs.append(utt["wav"][: utt["wav"].size // seg * seg])
            ids.append(utt["utterance_id"])
    return wavs, ids


def resynthesis_rows(model, source, *, limit: int | None = None, segment_seconds: float = 0.25) -> tuple[list, dict]:
    """Rows {condition, rmse, si_sdr, pesq, estoi (means, stds, n)} and one example (power, recon)."""
    wavs, ids = segment_waveforms(model.config, source, limit=limit, segment_seconds=segment_seconds)
    if not wavs:
        raise ValueError(f"{source.description}: no test utterance of at least {segment_seconds} s")
    hop = int(model.config.audio.hop)
    conditions = {"teacher-forced": None}
    if getattr(model.task, "scheduled", False):
        conditions["generation mode"] = 1.0
    rows, example = [], None
    for condition, use_pred in conditions.items():
        power = _power_fn(model, use_pred)

        def reconstruct(batch, chunk):
            valid = np.array([1 + batch.shape[1] // hop] * len(batch), np.int32)
            return power(model.variables, batch), valid

        result = resynthesis.score_audio(
            wavs,
            reconstruct,
            model.config.audio,
            griffin_lim=False,
            bucket_seconds=segment_seconds,
            metrics=METRICS,
            ids=ids,
        )
        rows.append({"condition": condition, **result["conditions"]["original phase"]})
        example = example or result["example"]
    return rows, example


def generation_figure(model, path: str, *, count: int = 3, seconds: float = 1.6, seed: int = 0) -> None:
    """Spectrograms of ``count`` sequences sampled from the learned prior (``seconds`` long, the thesis's
    generation length), each speech-power sample drawn from its generated variance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = int(seconds * int(model.config.audio.sample_rate) / int(model.config.audio.hop))
    log_var = model.task.module.apply(
        model.variables, count, frames, method="generate", rngs={"sample": jax.random.key(seed)}
    )
    power = np.exp(np.asarray(log_var)) * np.random.default_rng(seed).exponential(size=log_var.shape)
    fig, axes = plt.subplots(1, count, figsize=(4 * count, 3), sharey=True)
    for ax, p in zip(np.atleast_1d(axes), power):
        db = 10 * np.log10(p.T + 1e-10)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80)
        ax.set_xlabel("frame")
    np.atleast_1d(axes)[0].set_ylabel("bin")
    fig.suptitle(f"{model.task.display_name}: generated from the prior ({seconds} s)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
