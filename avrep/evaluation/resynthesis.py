"""Analysis-resynthesis evaluation of the tokenizers (MDVAE paper, Tables 2 and 3).

Audio: each test utterance's power spectrogram (centre-padded STFT, as in training) goes
through the model; the waveform is rebuilt (a) with the ORIGINAL phase by inverse STFT and
(b) with Griffin-Lim from the reconstructed power alone. A third row, Griffin-Lim on the
original power, separates the phase-retrieval loss from the model's. STOI, PESQ (wide-band,
ITU-T P.862.2) and SI-SDR compare against the peak-normalised original waveform.

Visual: every frame of each test utterance; pixels in [0, 1] (data range 1) for MSE, PSNR,
SCC and SSIM (Gaussian 11x11 window, sigma 1.5, as Wang et al. 2004). Per-frame values are
averaged per utterance; tables give mean ± std over utterances.

Utterances are zero-padded (silence) to a multiple of ``bucket_seconds`` so a handful of
shapes compile; metrics are computed on the original length only.

A model output with a NaN or an infinity is not scored (a metric such as PESQ would fail on it, or give a
number that means nothing): its metrics are NaN, counted as non-finite in the table, and the utterance is
listed in the summary's ``nonfinite_outputs``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from avrep import audio as audio_lib
from avrep.evaluation import metrics as metrics_lib
from avrep.evaluation.sequence import batched_apply
from avrep.evaluation.tables import summarize_rows
from data_pipelines.spec import decode_speech, decode_utterance

AUDIO_METRICS = ("stoi", "pesq", "si_sdr")
VISUAL_METRICS = ("mse", "psnr", "scc", "ssim")


NONFINITE = "nonfinite_outputs"  # summary key: ids of the utterances whose model output was not finite


def _utterances(source, hop: int, limit: int | None, decode=decode_utterance) -> Iterable[dict]:
    """Decoded records (``decode``'s fields) with their ``utterance_id``."""
    n = len(source) if limit is None else min(limit, len(source))
    for i in range(n):
        record = source[i]
        uid = record.get("utterance_id", str(i))
        yield {
            "utterance_id": uid.decode() if isinstance(uid, bytes) else str(uid),
            **decode(record, hop, f"{source.description}: record {i}"),
        }


def _summary(per_item: list[dict], metrics: Sequence[str], nonfinite: list[str]) -> dict[str, Any]:
    summary = summarize_rows(per_item, metrics)
    return {**summary, NONFINITE: nonfinite} if nonfinite else summary


def _waveform_builder(audio_cfg: dict, griffin_lim_iters: int, griffin_lim: bool):
    """jit: (wavs [B, L], recon power [B, F, bins], valid [B]) -> waveforms per condition, and the power.
    Frames at or beyond ``valid`` keep the original power (padding, or frames a model did not produce)."""
    n_fft, hop, window = int(audio_cfg["n_fft"]), int(audio_cfg["hop"]), str(audio_cfg["window"])
    pad_mode = str(audio_cfg["pad_mode"])

    @jax.jit
    def run(wavs, recon, valid):
        spec = audio_lib.stft(wavs, n_fft=n_fft, hop=hop, window=window, center=True, pad_mode=pad_mode)
        power = jnp.abs(spec) ** 2
        frame = jnp.arange(power.shape[1])[None, :, None]
        recon = jnp.where(frame < valid[:, None, None], recon, power)
        length = wavs.shape[-1]
        out = {
            "original phase": audio_lib.spectrogram_to_waveform(
                recon, jnp.angle(spec), hop=hop, window=window, length=length
            )
        }
        if griffin_lim:
            gl = functools.partial(
                audio_lib.griffin_lim,
                n_iter=griffin_lim_iters,
                hop=hop,
                window=window,
                length=length,
                key=jax.random.key(0),
            )
            out[f"Griffin-Lim ({griffin_lim_iters} it.)"] = gl(recon)
            out[f"reference: original power, Griffin-Lim ({griffin_lim_iters} it.)"] = gl(power)
        return out, power, recon

    return run


def score_audio(
    wavs: list[np.ndarray],
    reconstruct: Callable,
    audio_cfg: dict,
    *,
    griffin_lim_iters: int = 32,
    griffin_lim: bool = True,
    bucket_seconds: float = 0.5,
    batch_size: int = 16,
    metrics: tuple[str, ...] = AUDIO_METRICS,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-condition summaries (mean/std of ``metrics``: STOI, PESQ, SI-SDR by default; ``NONFINITE``: the
    ``ids`` (default: positions in ``wavs``) of utterances whose output was not finite) and one example for
    the figure.

    ``reconstruct(batch [B, L] zero-padded waveforms, indices into wavs)`` returns the model's power
    spectrogram [B, F, bins] (F: centre-padded frames of L samples) and the number of valid frames
    per row. Utterances are padded to a multiple of ``bucket_seconds`` so a few shapes compile.
    """
    sr, hop = int(audio_cfg["sample_rate"]), int(audio_cfg["hop"])
    bucket = int(bucket_seconds * sr)
    run = _waveform_builder(audio_cfg, griffin_lim_iters, griffin_lim)
    per_condition: dict[str, list[dict]] = {}
    nonfinite: dict[str, list[str]] = {}
    example = None
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(wavs):
        by_length.setdefault(-(-w.size // bucket) * bucket, []).append(i)
    for length, indices in sorted(by_length.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = np.zeros((batch_size, length), np.float32)  # fixed batch: one compile per bucket
            for row, i in enumerate(chunk):
                batch[row, : wavs[i].size] = wavs[i]
            recon, valid = reconstruct(batch, chunk)
            outputs, power, recon = jax.device_get(run(batch, recon, valid))
            for row, i in enumerate(chunk):
                ref = wavs[i]
                for condition, out in outputs.items():
                    estimate = out[row, : ref.size]
                    if np.all(np.isfinite(estimate)):
                        values = metrics_lib.audio_metrics(ref, estimate, sr, metrics)
                    else:
                        values = dict.fromkeys(metrics, float("nan"))
                        nonfinite.setdefault(condition, []).append(str(ids[i]) if ids is not None else str(i))
                    per_condition.setdefault(condition, []).append(values)
            if example is None:
                frames = 1 + wavs[chunk[0]].size // hop
                example = {"power": power[0, :frames], "recon": recon[0, :frames]}
    order = sorted(per_condition, key=lambda c: (c.startswith("reference"), c.startswith("Griffin")))
    return {
        "conditions": {c: _summary(per_condition[c], metrics, nonfinite.get(c, [])) for c in order},
        "example": example,
    }


def audio_resynthesis(
    model,
    source,
    *,
    limit: int | None = None,
    griffin_lim_iters: int = 32,
    bucket_seconds: float = 0.5,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Audio tokenizer: every frame of each test utterance through the VQ-VAE (see ``score_audio``)."""
    audio_cfg = model.config.audio
    n_fft, hop, window = int(audio_cfg["n_fft"]), int(audio_cfg["hop"]), str(audio_cfg["window"])
    pad_mode = str(audio_cfg["pad_mode"])

    @jax.jit
    def tokenizer_power(variables, wavs):
        power = audio_lib.power_spectrogram(wavs, n_fft=n_fft, hop=hop, window=window, center=True, pad_mode=pad_mode)
        return model.apply_fn(variables, power.reshape(-1, power.shape[-1]))["recon"].reshape(power.shape)

    def reconstruct(batch, chunk):
        recon = tokenizer_power(model.variables, batch)
        return recon, np.full(len(batch), recon.shape[1], np.int32)

    utts = list(_utterances(source, hop, limit, decode_speech))  # audio only: speech datasets too
    return score_audio(
        [u["wav"] for u in utts],
        reconstruct,
        audio_cfg,
        griffin_lim_iters=griffin_lim_iters,
        bucket_seconds=bucket_seconds,
        batch_size=batch_size,
        ids=[u["utterance_id"] for u in utts],
    )


def score_video(pairs: Iterable[tuple[np.ndarray, np.ndarray]], ids: Sequence[str] | None = None) -> dict[str, Any]:
    """(frames, recon) pairs in [0, 1] -> summary over utterances of per-utterance mean MSE, PSNR, SCC,
    SSIM (``NONFINITE``: the ``ids``, default positions, of non-finite reconstructions), and the first pair
    as the figure's example."""
    per_utt, nonfinite, example = [], [], None
    for k, (frames, recon) in enumerate(pairs):
        if not np.all(np.isfinite(recon)):  # np.clip would turn an infinity into a plausible pixel
            per_utt.append(dict.fromkeys(VISUAL_METRICS, float("nan")))
            nonfinite.append(str(ids[k]) if ids is not None else str(k))
            continue
        recon = np.clip(recon, 0.0, 1.0)
        values = metrics_lib.image_metrics(frames, recon, data_range=1.0)
        per_utt.append({m: float(np.mean(values[m])) for m in VISUAL_METRICS})
        if example is None:
            example = {"frames": frames, "recon": recon}
    return {"summary": _summary(per_utt, VISUAL_METRICS, nonfinite), "example": example}


def visual_resynthesis(model, source, *, limit: int | None = None, batch: int = 32) -> dict[str, Any]:
    """Visual tokenizer: every frame of each test utterance through the VQ-VAE (see ``score_video``).

    Frames go through in fixed batches (one compile); a small batch keeps the zero padding of an
    utterance's last batch small (a 256-frame batch computed 3.6 times the frames of a 70-frame clip).
    """
    hop = int(model.config.audio["hop"])
    apply = jax.jit(lambda v, x: {"recon": model.apply_fn(v, x["frames"] - 0.5)["recon"] + 0.5})

    ids = []  # filled as the pairs are drawn (one utterance in memory at a time), so ids[k] names pair k

    def pairs():
        for utt in _utterances(source, hop, limit):
            ids.append(utt["utterance_id"])
            frames = utt["video"].astype(np.float32) / 255.0
            yield frames, batched_apply(apply, model.variables, {"frames": frames}, batch)["recon"]

    return score_video(pairs(), ids=ids)


def spectrogram_figure(example: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, key, label in zip(axes, ("power", "recon"), ("original", "reconstructed")):
        ax.imshow(
            10 * np.log10(example[key].T + 1e-10),
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-80 + 10 * np.log10(example["power"].max() + 1e-10),
        )
        ax.set_ylabel(f"{label}\nbin")
    axes[-1].set_xlabel("frame")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def faces_figure(example: dict | None, path: str, title: str, count: int = 8) -> None:
    """Frames over their reconstructions; no figure when no utterance had a finite one (``example`` None)."""
    if example is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.linspace(0, len(example["frames"]) - 1, count).astype(int)
    fig, axes = plt.subplots(2, count, figsize=(1.4 * count, 3.2))
    for col, t in enumerate(idx):
        for row, key in enumerate(("frames", "recon")):
            axes[row, col].imshow(example[key][t])
            axes[row, col].axis("off")
        axes[0, col].set_title(f"t={t}", fontsize=8)
    fig.suptitle(f"{title} (top: original, bottom: reconstructed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
