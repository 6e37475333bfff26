"""Batches and records -> model inputs: power frames, images in the model's range, tokenizer latents flattened
in the authors' (PyTorch, channel-major) order, and the aligned per-frame inputs of whole utterances."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from avrep import audio as audio_lib
from data_pipelines.spec import audio_frame_windows, decode_speech, decode_utterance


def channel_major(z_e: jax.Array) -> jax.Array:
    """[N, *positions, C] channels-last latents -> [N, C * prod(positions)] in PyTorch's order."""
    return jnp.moveaxis(z_e, -1, 1).reshape(z_e.shape[0], -1)


def from_channel_major(x: jax.Array, latent_shape: tuple[int, ...]) -> jax.Array:
    """Inverse of ``channel_major``: [N, C * prod(positions)] -> [N, *latent_shape] (channels last)."""
    *positions, channels = latent_shape
    return jnp.moveaxis(x.reshape(x.shape[0], channels, *positions), 1, -1)


def audio_frames_to_power(windows: jax.Array, audio_cfg) -> jax.Array:
    """[..., n_fft] waveform windows -> [prod(...), bins] linear power spectrum frames."""
    power = audio_lib.power_spectrogram(
        windows, n_fft=int(audio_cfg["n_fft"]), hop=int(audio_cfg["hop"]), window=str(audio_cfg["window"]), center=False
    )
    return power.reshape(-1, power.shape[-1])


def video_to_model_range(video: jax.Array) -> jax.Array:
    """uint8 [..., H, W, 3] -> float32 [N, H, W, 3] in [-0.5, 0.5] (the papers' Normalize(0.5, 1))."""
    x = video.astype(jnp.float32) / 255.0 - 0.5
    return x.reshape(-1, *x.shape[-3:])


def utterance_frames(record: Mapping, audio_cfg, where: str, audio_rate: int = 1, audio_only: bool = False) -> dict:
    """One utterance as aligned per-frame inputs: n video frames [n, H, W, 3] uint8, ``audio_rate`` * n
    audio windows [r * n, n_fft] (each frames to exactly one centre-padded STFT frame; r = 2 in the VQ-MAE
    setting, 50 Hz audio against 25 fps video), and the peak-normalised waveform.

    ``audio_only``: the audio frames are the clock (an audio-only model reads no video, so its hop need not
    divide the video frame period): n = every STFT frame of the waveform, no "video" entry; the record's video
    (an audiovisual corpus's, 1x1 placeholders, or none in a speech dataset) is not read."""
    n_fft, hop = int(audio_cfg["n_fft"]), int(audio_cfg["hop"])
    utt = (decode_speech if audio_only else decode_utterance)(record, hop, where)
    audio_frames = 1 + len(utt["wav"]) // hop  # librosa's center=True frame count
    n = audio_frames if audio_only else min(len(utt["video"]), audio_frames // audio_rate)
    rate = 1 if audio_only else audio_rate
    padded = audio_lib.pad_for_center(utt["wav"], n_fft, str(audio_cfg["pad_mode"]))
    out = {"windows": audio_frame_windows(padded, np.arange(n * rate), n_fft, hop), "wav": utt["wav"], "num_frames": n}
    if not audio_only:
        out["video"] = utt["video"][:n]
    return out


def iter_utterance_features(
    encoders: Mapping[str, Callable],
    utterances: Iterable[dict],
    *,
    group: int = 8,
    chunk: int = 64,
    per_utterance: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """{modality: outputs [frames, ...]} of each ``utterance_frames`` dict, in order.

    ``encoders``: {"audio": f(windows [C, n_fft]), "visual": f(video [C, H, W, 3])}, jitted frame-wise
    functions (e.g. of ``FrozenTokenizers.frame_encoders``) compiled once by the caller and reused: a
    fresh ``jax.jit`` per call would recompile the encoders every time. Frames of ``group`` utterances
    are concatenated and encoded in fixed chunks of ``chunk`` frames (one compiled shape; padding wastes
    < one chunk per group). ``per_utterance``: each utterance's frames are encoded as one batch, unpadded
    (tokenizers with batch statistics: no other utterance or padding may enter its statistics; one
    compilation per distinct utterance length).
    """
    inputs = {"audio": "windows", "visual": "video"}

    def encode(fn, frames: np.ndarray) -> np.ndarray:
        total = len(frames)
        padded = np.pad(frames, ((0, -(-total // chunk) * chunk - total),) + ((0, 0),) * (frames.ndim - 1))
        return np.concatenate([jax.device_get(fn(padded[s : s + chunk])) for s in range(0, len(padded), chunk)])

    def flush(pending):
        out = [{} for _ in pending]
        for modality, fn in encoders.items():
            key = inputs[modality]
            encoded = encode(fn, np.concatenate([u[key] for u in pending]))
            offsets = np.cumsum([0] + [len(u[key]) for u in pending])
            for o, s, e in zip(out, offsets[:-1], offsets[1:]):
                o[modality] = encoded[s:e]
        return out

    if per_utterance:
        for utt in utterances:
            yield {m: np.asarray(jax.device_get(fn(utt[inputs[m]]))) for m, fn in encoders.items()}
        return
    pending = []
    for utt in utterances:
        pending.append(utt)
        if len(pending) == group:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)
