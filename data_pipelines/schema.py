"""The example schemas avrep datasets emit, defined once: audiovisual (SynthAV and the real corpora; audio-only
corpora with placeholder frames) and speech-only (the DVAE family's SynthAV speech view and speech folders).

Models and evaluators read only these fields, so any corpus works by changing ``config.data.name``.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds


def av_features(image_size: int, emotions: Sequence[str], intensities: Sequence[str]) -> dict:
    """utterance_id, speaker, speaker_index, emotion, intensity, 16 kHz int16 ``audio`` and uint8 ``video``
    [frames, image_size, image_size, 3] (audio-only corpora: 1x1 black frames, one per 10 ms: the TFDS
    tensor encoding cannot keep the frame count of an empty array)."""
    return {
        "utterance_id": tfds.features.Text(),
        "speaker": tfds.features.Text(),
        "speaker_index": np.int32,
        "emotion": tfds.features.ClassLabel(names=list(emotions)),
        "intensity": tfds.features.ClassLabel(names=list(intensities)),
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
        "video": tfds.features.Tensor(shape=(None, image_size, image_size, 3), dtype=np.uint8),
    }


def speech_features() -> dict:
    """The speech-only schema (the DVAE family; read with ``data_pipelines.spec.decode_speech``): utterance_id,
    speaker, speaker_index, 16 kHz int16 ``audio`` with leading and trailing silence trimmed, and
    ``trim_start``, the index of its first sample in the source recording. No video field."""
    return {
        "utterance_id": tfds.features.Text(),
        "speaker": tfds.features.Text(),
        "speaker_index": np.int32,
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
        "trim_start": np.int32,
    }


@contextlib.contextmanager
def shuffle_in_memory(max_bytes: int = 64 << 30):
    """TFDS shuffles a split's records in memory up to 1 GiB and spills beyond that through TensorFlow's
    gfile, which avrep does not install (it is not needed to read ArrayRecord). Inside this context the
    shuffle stays in memory up to ``max_bytes``, so splits of several GB build without TensorFlow (the
    records are held in host memory once while the split is written)."""
    from tensorflow_datasets.core import shuffle

    previous = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = max(previous, max_bytes)
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = previous
