"""The DVAE_SE front end for enhancement: batches of waveforms <-> padded complex STFTs with a frame mask.

16 kHz, sine window sin(pi (n + 1/2) / 1024), n_fft 1024, hop 256, centred frames with zero padding
([Lin-thesis] Sec. 6.4, [DVAE-SE]). Each waveform is divided by its peak |x| first, as the
authors' ``enhance()`` does, and the estimate is scaled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from avrep import audio

N_FFT, HOP, WINDOW = 1024, 256, "sine"
NUM_BINS = N_FFT // 2 + 1


class Batch(NamedTuple):
    """Padded STFTs of a list of utterances: ``X`` complex64 [B, T, F], ``mask`` bool [B, T] (True on an
    utterance's own frames; the padding is at the end), ``peak`` float32 [B] (the divisor applied to each
    waveform), ``length`` int [B] (samples)."""

    X: jnp.ndarray
    mask: jnp.ndarray
    peak: np.ndarray
    length: np.ndarray


def num_frames(length: int) -> int:
    return 1 + length // HOP


def stft(wave) -> jnp.ndarray:
    """Complex STFT [..., T, 513] of (already normalised) waveforms [..., samples]."""
    return audio.stft(jnp.asarray(wave, jnp.float32), N_FFT, HOP, WINDOW, True, "constant")


def istft(spec, length: int) -> jnp.ndarray:
    return audio.istft(jnp.asarray(spec, jnp.complex64), HOP, WINDOW, True, length)


def batch_stft(waveforms: Sequence[np.ndarray]) -> Batch:
    """Peak-normalises each waveform and returns their padded STFTs. ValueError naming the utterance for
    a waveform that is not 1-D, shorter than one hop, not finite or silent (all zeros)."""
    if len(waveforms) == 0:
        raise ValueError("batch_stft: no waveforms")
    waves, peaks = [], []
    for i, w in enumerate(waveforms):
        w = np.asarray(w, np.float32)
        if w.ndim != 1 or w.shape[0] < HOP:
            raise ValueError(f"batch_stft: utterance {i} has shape {w.shape}; expected 1-D with >= {HOP} samples")
        if not np.isfinite(w).all():
            raise ValueError(f"batch_stft: utterance {i} contains NaN or inf")
        peak = float(np.max(np.abs(w)))
        if peak == 0.0:
            raise ValueError(f"batch_stft: utterance {i} is silent (all samples are zero)")
        waves.append(w / peak)
        peaks.append(peak)
    lengths = np.array([w.shape[0] for w in waves])
    longest = int(lengths.max())
    padded = np.stack([np.pad(w, (0, longest - w.shape[0])) for w in waves])
    frames = num_frames(longest)
    mask = np.arange(frames)[None, :] < np.array([num_frames(n) for n in lengths])[:, None]
    # Frames past an utterance's end are zeroed, so they carry no energy of the next-to-last frame's tail.
    X = stft(padded) * mask[..., None]
    return Batch(X, jnp.asarray(mask), np.asarray(peaks, np.float32), lengths)


def power_spectrograms(waves: list[np.ndarray], chunk: int = 32) -> list[np.ndarray]:
    """|STFT|² [T_i, F] of each peak-normalised waveform (the test-time front end), computed ``chunk`` at a time
    as padded batches: a few array shapes instead of one compilation per utterance length."""
    out = []
    for start in range(0, len(waves), chunk):
        batch = batch_stft(waves[start : start + chunk])
        power = np.square(np.abs(np.asarray(batch.X)))
        out += [power[i, : num_frames(int(n))] for i, n in enumerate(batch.length)]
    return out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Utterance indices grouped into batches of at most ``batch_size`` of similar lengths (sorted), so that
    little padding is needed: the backward-in-time encoders read the padding first (measured: 40 padded
    frames after a 126-frame utterance cost an RVAE prior's VEM 0.3 dB SI-SDR)."""
    if batch_size < 1:
        raise ValueError(f"length_batches: batch_size={batch_size!r}; expected >= 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_istft(S_hat, batch: Batch) -> list[np.ndarray]:
    """Waveforms of the estimates ``S_hat`` [B, T, F] at each utterance's own scale and length."""
    out = []
    for i, n in enumerate(batch.length):
        frames = num_frames(int(n))
        wave = istft(jnp.asarray(S_hat)[i, :frames], int(n))
        out.append(np.asarray(wave) * batch.peak[i])
    return out
