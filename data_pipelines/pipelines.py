"""Grain input pipelines over TFDS ArrayRecord datasets.

The host side stays light: read a record, peak-normalise the waveform, cut aligned audio and
video windows, batch. Spectrograms are computed on the accelerator inside the jitted step
(avrep.audio), from waveform windows cut so that on-device framing with ``center=False``
equals librosa's ``center=True`` STFT of the whole utterance (see ``audio_frame_windows``).

Determinism and multi-host: every pipeline is one global, index-addressed MapDataset
(shuffle, repeat and per-element randomness keyed by the global element index and the
config seed). Each process takes its own contiguous block of every global batch, so the
global batch assembled across processes is identical, row for row, to a single-process run.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Mapping, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from avrep.audio import pad_for_center


PREFETCH_BATCHES = 16


class DataError(ValueError):
    """A record or dataset that does not have the expected content."""


@dataclasses.dataclass(frozen=True)
class AudioFraming:
    """How waveforms become spectrogram frames (must match the model's audio front end)."""
    n_fft: int = 1024
    hop: int = 533
    pad_mode: str = "constant"


class CheckedSource:
    """A random-access source whose read errors name the dataset, split and record."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        # The resolved path: feature caches fingerprint the description, and runs that reach the same data
        # through a symlink must share them.
        where = os.path.realpath(data_dir) if data_dir else "the TFDS default data_dir"
        self.description = f"{name}[{split}] in {where}"
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        except Exception as e:  # TFDS raises several types for a missing/incomplete dataset.
            raise DataError(f"cannot open dataset {self.description}: {e}") from e
        if len(self._source) == 0:
            raise DataError(f"dataset {self.description} is empty: expected at least one record")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        try:
            return self._source[index]
        except Exception as e:
            raise DataError(f"{self.description}: record {index} cannot be decoded ({type(e).__name__}: {e})") from e


def open_source(name: str, split: str, data_dir: str | None) -> CheckedSource:
    return CheckedSource(name, split, data_dir)


class _SlimCache:
    """Keeps only the fields the training transforms read, and caches them up to ``max_bytes``.

    A record decodes whole (the video too) even when a tokenizer needs only its audio: on
    SynthAV that costs more host CPU than the audio VQ-VAE's train step. Tokenizer training
    revisits every utterance many times, so the slim records are kept after the first read.
    Transparent to determinism and to the checkpointed iterator state.
    """

    def __init__(self, source: CheckedSource, modalities: Sequence[str], max_bytes: int):
        self._source, self._keep_video = source, "video" in modalities
        self._max_bytes, self._bytes = max_bytes, 0
        self._cache: dict[int, dict] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        slim = self._cache.get(index)
        if slim is not None:
            return slim
        record = self._source[index]
        video = np.asarray(record.get("video", ()))
        if not self._keep_video and video.ndim == 4:
            # Audio-only: keep the frame count (alignment) but not the pixels (a new array, not a view).
            video = np.empty((video.shape[0], 0, 0, video.shape[3]), video.dtype)
        slim = {"audio": np.asarray(record.get("audio", ())), "video": video,
                "utterance_id": record.get("utterance_id", "?")}
        size = sum(v.nbytes for v in slim.values() if isinstance(v, np.ndarray))
        with self._lock:
            if self._bytes + size <= self._max_bytes and index not in self._cache:
                self._cache[index] = slim
                self._bytes += size
        return slim


def decode_utterance(record: Mapping[str, Any], hop: int, where: str) -> dict:
    """Validates a record; returns the peak-normalised waveform, the video and the aligned frame count."""
    audio = np.asarray(record.get("audio", ()))
    video = np.asarray(record.get("video", ()))
    if audio.ndim != 1 or audio.size == 0:
        raise DataError(f"{where}: field 'audio' must be a non-empty 1-D waveform, got shape {audio.shape}")
    if video.ndim != 4 or video.shape[0] == 0 or video.shape[-1] != 3:
        raise DataError(f"{where}: field 'video' must be [frames, H, W, 3] with frames > 0, got shape {video.shape}")
    wav = audio.astype(np.float32) / 32768.0
    peak = np.max(np.abs(wav))
    if not np.isfinite(peak) or peak == 0.0:
        raise DataError(f"{where}: field 'audio' is silent or non-finite (peak {peak})")
    audio_frames = 1 + audio.size // hop  # librosa's center=True frame count
    return {"wav": wav / peak,  # peak normalisation, as the papers' code does
            "video": video, "num_frames": min(audio_frames, video.shape[0])}


def audio_frame_windows(padded_wav: np.ndarray, starts: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Waveform windows [len(starts), length] beginning at frame indices ``starts``."""
    offsets = starts[:, None] * hop + np.arange(length)[None, :]
    return padded_wav[offsets]


class _RandomFrames(grain.transforms.RandomMap):
    """K random single frames of one utterance (tokenizer training)."""

    def __init__(self, frames_per_example: int, framing: AudioFraming, modalities: Sequence[str], where: str):
        self.k, self.framing, self.modalities, self.where = frames_per_example, framing, tuple(modalities), where

    def random_map(self, record, rng: np.random.Generator):
        utt = decode_utterance(record, self.framing.hop, self.where)
        starts = rng.integers(0, utt["num_frames"], size=self.k)
        out = {}
        if "audio" in self.modalities:  # [K, n_fft]: each row frames to exactly one STFT frame.
            padded = pad_for_center(utt["wav"], self.framing.n_fft, self.framing.pad_mode)
            out["audio"] = audio_frame_windows(padded, starts, self.framing.n_fft, self.framing.hop)
        if "video" in self.modalities:
            out["video"] = utt["video"][starts]
        return out


class _RandomWindow(grain.transforms.RandomMap):
    """One aligned window of T consecutive audio and video frames (sequence models)."""

    def __init__(self, num_frames: int, framing: AudioFraming, modalities: Sequence[str], where: str):
        self.t, self.framing, self.modalities, self.where = num_frames, framing, tuple(modalities), where

    def random_map(self, record, rng: np.random.Generator):
        utt = decode_utterance(record, self.framing.hop, self.where)
        if utt["num_frames"] < self.t:
            raise DataError(f"{self.where}: utterance {record.get('utterance_id', '?')!r} has "
                            f"{utt['num_frames']} frames, fewer than the window of {self.t}")
        t0 = int(rng.integers(0, utt["num_frames"] - self.t + 1))
        out = {}
        if "audio" in self.modalities:  # (T-1)*hop + n_fft samples: frames to exactly T STFT frames.
            length = (self.t - 1) * self.framing.hop + self.framing.n_fft
            padded = pad_for_center(utt["wav"], self.framing.n_fft, self.framing.pad_mode)
            out["audio"] = padded[t0 * self.framing.hop: t0 * self.framing.hop + length]
        if "video" in self.modalities:
            out["video"] = utt["video"][t0:t0 + self.t]
        return out


def aligned_frames(video_frames: np.ndarray, rate: int) -> np.ndarray:
    """Indices of the frames of a stream with ``rate`` frames per video frame that lie beside the video
    frames ``video_frames`` [..., T] -> [..., rate * T] (rate 1: the same indices)."""
    return (rate * video_frames[..., None] + np.arange(rate)).reshape(*video_frames.shape[:-1], -1)


class _RandomFeatureWindow(grain.transforms.RandomMap):
    """One window of T consecutive video frames (and the r * T audio frames beside them) of cached
    per-frame tokenizer outputs (avrep.training.features.FeatureSource), with the record's ``labels``.

    An utterance shorter than T is an error, or with ``wrap_short`` repeated from its start until it fills
    the window (the VQ-MAE code's wrap padding for short fine-tuning clips).
    """

    def __init__(self, num_frames: int, keys: Sequence[str], labels: Sequence[str], wrap_short: bool,
                 where: str):
        self.t, self.keys, self.labels = num_frames, tuple(keys), tuple(labels)
        self.wrap_short, self.where = wrap_short, where

    def random_map(self, record, rng: np.random.Generator):
        n = len(record["x_visual"])
        if n < self.t and not self.wrap_short:
            raise DataError(f"{self.where}: utterance {record.get('utterance_id', '?')!r} has {n} frames, "
                            f"fewer than the window of {self.t}")
        t0 = int(rng.integers(0, max(n - self.t, 0) + 1))
        frames = (t0 + np.arange(self.t)) % n  # wraps only when n < T
        out = {}
        for key in self.keys:
            out[key] = record[key][aligned_frames(frames, len(record[key]) // n)]
        for label in self.labels:
            if label not in record:
                raise DataError(f"{self.where}: utterance {record.get('utterance_id', '?')!r} has no label "
                                f"{label!r}")
            out[label] = np.int32(record[label])
        return out


class _ProcessBlocks(grain.MapDataset):
    """Process ``index`` of ``count`` keeps rows [index*block, (index+1)*block) of every global batch."""

    def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
        super().__init__(parent)
        self._block, self._index, self._count = block, index, count

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        global_index = (i // self._block) * self._block * self._count + self._index * self._block + i % self._block
        return self._parent[global_index]

    def __str__(self) -> str:
        return f"ProcessBlocks(block={self._block}, index={self._index}, count={self._count})"


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """What a task needs from the data: random frames (tokenizers) or windows (sequence models)."""
    kind: str                        # "frames" | "windows" | "feature_windows" (cached features)
    examples_per_batch: int          # global number of utterance crops per batch
    frames_per_example: int          # K random frames, or the window length T
    modalities: tuple[str, ...] = ("audio", "video")  # fields delivered (feature_windows: "x_audio", ...)
    labels: tuple[str, ...] = ()     # feature_windows: per-utterance integer labels delivered too
    wrap_short: bool = False         # feature_windows: wrap utterances shorter than T instead of failing


def training_iterator(source: CheckedSource, spec: PipelineSpec, framing: AudioFraming, *, seed: int,
                      process_index: int = 0, process_count: int = 1,
                      cache_mb: float = 0) -> grain.DatasetIterator:
    """Infinite, shuffled, checkpointable iterator of this process's part of each global batch.

    ``cache_mb`` > 0 keeps up to that many MB of slim decoded records in host memory (see _SlimCache).
    """
    if spec.kind == "frames":
        transform = _RandomFrames(spec.frames_per_example, framing, spec.modalities, source.description)
    elif spec.kind == "windows":
        transform = _RandomWindow(spec.frames_per_example, framing, spec.modalities, source.description)
    elif spec.kind == "feature_windows":
        transform = _RandomFeatureWindow(spec.frames_per_example, spec.modalities, spec.labels, spec.wrap_short,
                                         source.description)
        cache_mb = 0  # the features are memory-mapped already
    else:
        raise ValueError(f"pipeline kind must be 'frames', 'windows' or 'feature_windows', got {spec.kind!r}")
    if spec.examples_per_batch % process_count:
        raise ValueError(f"examples_per_batch={spec.examples_per_batch} is not divisible by the "
                         f"{process_count} processes")
    local = spec.examples_per_batch // process_count
    if cache_mb > 0:
        source = _SlimCache(source, spec.modalities, int(cache_mb * 2**20))
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None).random_map(transform)
    ds = _ProcessBlocks(ds, local, process_index, process_count)
    # Grain prefetches 500 elements by default; ours are whole batches (10 MB at stage 2), so keep a few.
    read_options = grain.ReadOptions(num_threads=16, prefetch_buffer_size=PREFETCH_BATCHES)
    return ds.batch(local, drop_remainder=True).to_iter_dataset(read_options).__iter__()


__all__ = ["AudioFraming", "CheckedSource", "DataError", "PipelineSpec", "audio_frame_windows",
           "decode_utterance", "open_source", "training_iterator"]
