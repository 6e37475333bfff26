"""Grain input pipelines over TFDS ArrayRecord datasets.

The host side stays light: read a record, peak-normalise the waveform, cut aligned audio and
video windows, batch. Spectrograms are computed on the accelerator inside the jitted step
(avrep.audio), from waveform windows cut so that on-device framing with ``center=False``
equals librosa's ``center=True`` STFT of the whole utterance (see ``audio_frame_windows``).

Kinds (``PipelineSpec.kind``) and their batches, B = local examples per batch:
  frames          audio [B, K, n_fft] float32, video [B, K, H, W, 3] uint8: K random frames per utterance
  windows         audio [B, (T-1)*hop + n_fft] float32, video [B, T, H, W, 3] uint8: T aligned frames
  speech_windows  audio [B, (T-1)*hop + n_fft] float32 only, from any dataset (speech datasets have no video)
  feature_windows cached tokenizer features (avrep.features.cache) and integer labels

Determinism and multi-host: every pipeline is one global, index-addressed MapDataset
(shuffle, repeat and per-element randomness keyed by the global element index and the
config seed). Each process takes its own contiguous block of every global batch, so the
global batch assembled across processes is identical, row for row, to a single-process run.
"""

from __future__ import annotations

import threading
from typing import Sequence

import grain
import numpy as np

from avrep.audio import pad_for_center
from data_pipelines.sources import CheckedSource
from data_pipelines.spec import (
    AudioFraming,
    DataError,
    PipelineSpec,
    aligned_frames,
    audio_frame_windows,
    clock_frames,
    decode_speech,
    decode_utterance,
)

PREFETCH_BATCHES = 16


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
        slim = {
            "audio": np.asarray(record.get("audio", ())),
            "video": video,
            "utterance_id": record.get("utterance_id", "?"),
        }
        size = sum(v.nbytes for v in slim.values() if isinstance(v, np.ndarray))
        with self._lock:
            if self._bytes + size <= self._max_bytes and index not in self._cache:
                self._cache[index] = slim
                self._bytes += size
        return slim


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
    """One aligned window of T consecutive audio and video frames (sequence models); with ``speech``, of audio
    only, from any dataset's records (speech datasets have no video: ``decode_speech``)."""

    def __init__(
        self, num_frames: int, framing: AudioFraming, modalities: Sequence[str], where: str, speech: bool = False
    ):
        self.t, self.framing, self.modalities, self.where = num_frames, framing, tuple(modalities), where
        self.decode = decode_speech if speech else decode_utterance

    def random_map(self, record, rng: np.random.Generator):
        utt = self.decode(record, self.framing.hop, self.where)
        if utt["num_frames"] < self.t:
            raise DataError(
                f"{self.where}: utterance {record.get('utterance_id', '?')!r} has "
                f"{utt['num_frames']} frames, fewer than the window of {self.t}"
            )
        t0 = int(rng.integers(0, utt["num_frames"] - self.t + 1))
        out = {}
        if "audio" in self.modalities:  # (T-1)*hop + n_fft samples: frames to exactly T STFT frames.
            length = (self.t - 1) * self.framing.hop + self.framing.n_fft
            padded = pad_for_center(utt["wav"], self.framing.n_fft, self.framing.pad_mode)
            out["audio"] = padded[t0 * self.framing.hop : t0 * self.framing.hop + length]
        if "video" in self.modalities:
            out["video"] = utt["video"][t0 : t0 + self.t]
        return out


class _RandomFeatureWindow(grain.transforms.RandomMap):
    """One window of T consecutive video frames (and the r * T audio frames beside them) of cached
    per-frame tokenizer outputs (avrep.features.cache.FeatureSource), with the record's ``labels``; in an
    audio-only record, T consecutive audio frames (``clock_frames``).

    An utterance shorter than T is an error, or with ``wrap_short`` repeated from its start until it fills
    the window (the VQ-MAE code's wrap padding for short fine-tuning clips).
    """

    def __init__(self, num_frames: int, keys: Sequence[str], labels: Sequence[str], wrap_short: bool, where: str):
        self.t, self.keys, self.labels = num_frames, tuple(keys), tuple(labels)
        self.wrap_short, self.where = wrap_short, where

    def random_map(self, record, rng: np.random.Generator):
        n = clock_frames(record)
        if n < self.t and not self.wrap_short:
            raise DataError(
                f"{self.where}: utterance {record.get('utterance_id', '?')!r} has {n} frames, "
                f"fewer than the window of {self.t}"
            )
        t0 = int(rng.integers(0, max(n - self.t, 0) + 1))
        frames = (t0 + np.arange(self.t)) % n  # wraps only when n < T
        out = {}
        for key in self.keys:
            out[key] = record[key][aligned_frames(frames, len(record[key]) // n)]
        for label in self.labels:
            if label not in record:
                raise DataError(f"{self.where}: utterance {record.get('utterance_id', '?')!r} has no label {label!r}")
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


def training_iterator(
    source: CheckedSource,
    spec: PipelineSpec,
    framing: AudioFraming,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    cache_mb: float = 0,
) -> grain.DatasetIterator:
    """Infinite, shuffled, checkpointable iterator of this process's part of each global batch.

    ``cache_mb`` > 0 keeps up to that many MB of slim decoded records in host memory (see _SlimCache).
    """
    if spec.kind == "frames":
        transform = _RandomFrames(spec.frames_per_example, framing, spec.modalities, source.description)
    elif spec.kind == "windows":
        transform = _RandomWindow(spec.frames_per_example, framing, spec.modalities, source.description)
    elif spec.kind == "speech_windows":
        if tuple(spec.modalities) != ("audio",):
            raise ValueError(f"pipeline kind 'speech_windows' delivers modalities ('audio',), got {spec.modalities}")
        transform = _RandomWindow(spec.frames_per_example, framing, spec.modalities, source.description, speech=True)
    elif spec.kind == "feature_windows":
        transform = _RandomFeatureWindow(
            spec.frames_per_example, spec.modalities, spec.labels, spec.wrap_short, source.description
        )
        cache_mb = 0  # the features are memory-mapped already
    else:
        raise ValueError(
            f"pipeline kind must be 'frames', 'windows', 'speech_windows' or 'feature_windows', got {spec.kind!r}"
        )
    if spec.examples_per_batch % process_count:
        raise ValueError(
            f"examples_per_batch={spec.examples_per_batch} is not divisible by the {process_count} processes"
        )
    local = spec.examples_per_batch // process_count
    if cache_mb > 0:
        source = _SlimCache(source, spec.modalities, int(cache_mb * 2**20))
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None).random_map(transform)
    ds = _ProcessBlocks(ds, local, process_index, process_count)
    # Grain prefetches 500 elements by default; ours are whole batches (10 MB at stage 2), so keep a few.
    read_options = grain.ReadOptions(num_threads=16, prefetch_buffer_size=PREFETCH_BATCHES)
    return ds.batch(local, drop_remainder=True).to_iter_dataset(read_options).__iter__()
