"""Audio-only vs audiovisual speech enhancement ([AV-slides]' AV-CVAE; keys: docs/REFERENCES.md).

The plan's ``av`` block (configs/se_pipeline.py) names an audiovisual training set (SynthAV faces with their
speech, ``synthav/mdvae``), the ``_av`` noisy test set of a condition (the same mixtures with the speaker's
face video) and a training budget. Two speech models of the same widths are trained on the same clean
windows: the AV-CVAE (lip images, visual prior, modified ELBO) and its audio-only counterpart (no lips,
prior N(0, I), the plain ELBO); both enhance the first ``limit`` test mixtures with the same Monte-Carlo EM
and NMF noise model (``avrep.models.enhancement.mcem_av``), so the rows differ only by the video.

Lip images: a fixed box of LIP_ROWS x LIP_COLS pixels around the mouth, centred where
``manipulation.region_mask`` places the mouth box from the clean face's layout, in grey levels in [0, 1];
the video frame beside each STFT frame (frame n's centre at n * hop samples) is the one shown.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from avrep.evaluation.manipulation import region_mask
from avrep.models import enhancement as se
from avrep.models.enhancement.frontend import HOP
from data_pipelines.sources import open_source
from data_pipelines.spec import DataError, decode_speech

SAMPLE_RATE = 16000
LIP_ROWS, LIP_COLS = 12, 20  # about the mouth box of region_mask on 64x64 faces (0.36 x 0.64 image units)
AV_LABEL, AUDIO_LABEL = "AV-CVAE-MCEM", "A-CVAE-MCEM"


def lip_frames(video: np.ndarray, num_frames: int, fps: int, where: str) -> np.ndarray:
    """Grey-level mouth crops of ``video`` [K, H, W, 3] uint8, one per STFT frame: [num_frames, LIP_ROWS *
    LIP_COLS] float32. DataError naming ``where`` for a video too short for the audio (more than 2 frames)."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[0] == 0 or video.shape[1] < LIP_ROWS or video.shape[2] < LIP_COLS:
        raise DataError(f"{where}: video of shape {video.shape}; expected [frames, H, W, 3] with H, W >= 20")
    needed = -(-(num_frames - 1) * HOP * fps // SAMPLE_RATE)
    if video.shape[0] < needed - 2:
        raise DataError(f"{where}: {video.shape[0]} video frames at {fps} fps for {num_frames} STFT frames")
    mask = region_mask(video, "mouth")
    rows, cols = np.nonzero(mask)
    top = int(np.clip(round(rows.mean() - LIP_ROWS / 2), 0, video.shape[1] - LIP_ROWS))
    left = int(np.clip(round(cols.mean() - LIP_COLS / 2), 0, video.shape[2] - LIP_COLS))
    crops = video[:, top : top + LIP_ROWS, left : left + LIP_COLS].astype(np.float32).mean(-1) / 255.0
    index = np.minimum(np.arange(num_frames) * HOP * fps // SAMPLE_RATE, video.shape[0] - 1)
    return crops[index].reshape(num_frames, LIP_ROWS * LIP_COLS)


def training_windows(
    dataset: str, data_dir: str, settings: se.CVAETrainSettings, *, utterances: int, fps: int, seed: int
):
    """``windows(step) -> (power [B, T, F], lips [B, T, P])``: random windows of ``settings.frames`` frames of
    the first ``utterances`` utterances of an audiovisual dataset's train split (audio peak-normalised, as the
    test mixtures are); utterances shorter than a window are left out."""
    source = open_source(dataset, "train", data_dir)
    waves, videos = [], []
    for i in range(min(utterances, len(source))):
        record = source[i]
        waves.append(decode_speech(record, HOP, f"{source.description}: record {i}")["wav"])
        videos.append(np.asarray(record["video"]))
    powers, lips = [], []
    for i, (power, video) in enumerate(zip(se.frontend.power_spectrograms(waves), videos)):
        if power.shape[0] >= settings.frames:  # shorter utterances cannot fill a window
            powers.append(power.astype(np.float32))
            lips.append(lip_frames(video, power.shape[0], fps, f"{source.description}: record {i}"))
    if not powers:
        raise DataError(f"{source.description}: no utterance of at least {settings.frames} STFT frames")

    def windows(step: int):
        rng = np.random.default_rng([seed, step])
        picks = rng.integers(0, len(powers), settings.batch_size)
        starts = [int(rng.integers(0, powers[u].shape[0] - settings.frames + 1)) for u in picks]
        power = np.stack([powers[u][s : s + settings.frames] for u, s in zip(picks, starts)])
        lip = np.stack([lips[u][s : s + settings.frames] for u, s in zip(picks, starts)])
        return power, lip

    return windows


def enhance_av(model, variables, mixtures: list[dict], *, fps: int, batch: int, settings: se.MCEMSettings, seed: int):
    """(estimates in the mixtures' order, processing seconds): MCEM with ``model`` over batches of similar
    lengths, each batch one compiled program."""
    order = sorted(range(len(mixtures)), key=lambda i: mixtures[i]["noisy"].size)
    estimates: list[np.ndarray | None] = [None] * len(mixtures)
    wall = 0.0
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        frames = se.batch_stft([mixtures[i]["noisy"] for i in chunk])
        T = frames.X.shape[1]
        lips = np.zeros((len(chunk), T, model.lip_dim), np.float32)
        for b, i in enumerate(chunk):
            n = se.frontend.num_frames(mixtures[i]["noisy"].size)
            lips[b, :n] = lip_frames(mixtures[i]["video"], n, fps, mixtures[i]["utterance_id"])
        key = jax.random.fold_in(jax.random.key(seed), start)
        began = time.perf_counter()
        out = se.mcem_av(model, variables, frames.X, frames.mask, lips, settings=settings, key=key)
        S_hat = jax.block_until_ready(out["S_hat"])
        wall += time.perf_counter() - began
        for i, wave in zip(chunk, se.batch_istft(S_hat, frames)):
            estimates[i] = wave
    return estimates, wall


def train_and_enhance(av: dict, plan: dict, mixtures: list[dict], log=print) -> dict[str, tuple[list, dict]]:
    """The two rows of the audio-only vs audiovisual comparison: {label: (estimates, info)}; ``av`` is the
    plan's ``av`` block (train_dataset, fps, utterances, the CVAETrainSettings fields, iterations, nmf_rank)."""
    fps = int(av["fps"])
    fields = {k: av[k] for k in ("num_steps", "batch_size", "frames", "learning_rate", "alpha") if k in av}
    settings = se.CVAETrainSettings(**fields)
    # MCEM: the plan's iterations, and its NMF rank where it sets one (else MCEMSettings' default)
    mcem = se.MCEMSettings(num_iterations=int(av["iterations"]), **{k: int(av[k]) for k in ("nmf_rank",) if k in av})
    seed = int(plan["seed"])
    windows = training_windows(
        av["train_dataset"], plan["data_dir"], settings, utterances=int(av.get("utterances", 10**9)), fps=fps, seed=seed
    )
    lip_dim = LIP_ROWS * LIP_COLS
    out = {}
    for label, visual in ((AUDIO_LABEL, False), (AV_LABEL, True)):
        model = se.AVCVAE(lip_dim=lip_dim, visual=visual)
        began = time.perf_counter()
        variables, history = se.train_cvae(model, windows, settings=settings, key=jax.random.key(seed))
        train_seconds = time.perf_counter() - began
        log(
            f"[avrep] se av: {label} trained {settings.num_steps} steps in {train_seconds:.0f} s, loss "
            f"{history['loss'][:20].mean():.1f} -> {history['loss'][-20:].mean():.1f}"
        )
        estimates, seconds = enhance_av(
            model,
            variables,
            mixtures,
            fps=fps,
            batch=int(plan["batch"]),
            settings=mcem,
            seed=seed,
        )
        out[label] = (estimates, dict(seconds=seconds, train_s=train_seconds))
    return out
