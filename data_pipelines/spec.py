"""What the input pipelines deliver and how records are read: shared by the Grain pipelines, the feature
caches and the tasks, importing neither Grain nor TFDS (loading a trained model needs neither)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

FEATURE_MODALITIES = ("audio", "visual")


def feature_field(modality: str) -> str:
    """The field of a cached per-frame feature record (and of its batches) holding ``modality``'s frames."""
    return f"x_{modality}"


def clock_frames(record: Mapping) -> int:
    """The frames a cached feature record's windows are counted in: its video frames, or its audio frames in an
    audio-only record (an audio-only model has its own frame rate); the other streams hold whole multiples."""
    clock = feature_field("visual") if feature_field("visual") in record else feature_field("audio")
    return len(record[clock])


class DataError(ValueError):
    """A record or dataset that does not have the expected content."""


@dataclasses.dataclass(frozen=True)
class AudioFraming:
    """How waveforms become spectrogram frames (must match the model's audio front end)."""

    n_fft: int = 1024
    hop: int = 533
    pad_mode: str = "constant"


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """What a task needs from the data: random frames (tokenizers) or windows (sequence models)."""

    kind: str  # "frames" | "windows" | "speech_windows" (audio only, any dataset) | "feature_windows" (cached)
    examples_per_batch: int  # global number of utterance crops per batch
    frames_per_example: int  # K random frames, or the window length T
    modalities: tuple[str, ...] = ("audio", "video")  # fields delivered (feature_windows: "x_audio", ...)
    labels: tuple[str, ...] = ()  # feature_windows: per-utterance integer labels delivered too
    wrap_short: bool = False  # feature_windows: wrap utterances shorter than T instead of failing


def _peak_normalised(record: Mapping[str, Any], where: str) -> np.ndarray:
    audio = np.asarray(record.get("audio", ()))
    if audio.ndim != 1 or audio.size == 0:
        raise DataError(f"{where}: field 'audio' must be a non-empty 1-D waveform, got shape {audio.shape}")
    wav = audio.astype(np.float32) / 32768.0
    peak = np.max(np.abs(wav))
    if not np.isfinite(peak) or peak == 0.0:
        raise DataError(f"{where}: field 'audio' is silent or non-finite (peak {peak})")
    return wav / peak  # peak normalisation, as the papers' code does


def decode_utterance(record: Mapping[str, Any], hop: int, where: str) -> dict:
    """Validates a record; returns the peak-normalised waveform, the video and the aligned frame count."""
    video = np.asarray(record.get("video", ()))
    wav = _peak_normalised(record, where)
    if video.ndim != 4 or video.shape[0] == 0 or video.shape[-1] != 3:
        raise DataError(f"{where}: field 'video' must be [frames, H, W, 3] with frames > 0, got shape {video.shape}")
    audio_frames = 1 + wav.size // hop  # librosa's center=True frame count
    return {"wav": wav, "video": video, "num_frames": min(audio_frames, video.shape[0])}


def decode_speech(record: Mapping[str, Any], hop: int, where: str) -> dict:
    """Validates the audio of a record (a speech dataset's, or an audiovisual one's, whose video is ignored);
    returns the peak-normalised float32 waveform and its number of centred STFT frames, 1 + len // hop."""
    wav = _peak_normalised(record, where)
    return {"wav": wav, "num_frames": 1 + wav.size // hop}


def speech_utterances(source: Sequence[Mapping[str, Any]], hop: int) -> Iterator[dict]:
    """Every record of ``source`` (a random-access source, e.g. ``sources.open_source``) as a whole utterance
    for evaluation: ``decode_speech``'s fields and the ``utterance_id``. The model's input is the centred
    STFT of ``wav`` (``avrep.audio.power_spectrogram(wav, n_fft, hop, window, center=True, pad_mode)``)."""
    description = getattr(source, "description", "source")
    for i in range(len(source)):
        record = source[i]
        utt = decode_speech(record, hop, f"{description}: record {i}")
        uid = record.get("utterance_id", str(i))
        yield {"utterance_id": uid.decode() if isinstance(uid, bytes) else str(uid), **utt}


def audio_frame_windows(padded_wav: np.ndarray, starts: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Waveform windows [len(starts), length] beginning at frame indices ``starts``."""
    offsets = starts[:, None] * hop + np.arange(length)[None, :]
    return padded_wav[offsets]


def aligned_frames(video_frames: np.ndarray, rate: int) -> np.ndarray:
    """Indices of the frames of a stream with ``rate`` frames per video frame that lie beside the video
    frames ``video_frames`` [..., T] -> [..., rate * T] (rate 1: the same indices)."""
    return (rate * video_frames[..., None] + np.arange(rate)).reshape(*video_frames.shape[:-1], -1)
