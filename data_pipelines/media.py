"""Audio and video decoding for the corpus builders (PyAV: its wheel bundles FFmpeg, no system install).

Every failure a corpus file can cause (truncated or corrupt container, missing track, no frames)
raises ``MediaError`` with a short reason, which the builders record in their skip manifest.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import av
import numpy as np

from data_pipelines.spec import DataError

SAMPLE_RATE = 16000
PEAK = 0.99  # stored int16 waveforms are peak-normalised to this fraction of full scale
# A track that decodes shorter than its container declares, by more than this (seconds, or 5 % of the declared
# length: encoder priming and padding make the two differ a little), is truncated or damaged and skipped.
TRUNCATION_TOLERANCE_S = 0.25


class MediaError(DataError):
    """A media file that cannot give what a builder needs; ``reason`` goes to the manifest."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _open(path: str):
    try:
        return av.open(path)
    except Exception as e:  # PyAV raises FFmpeg errors of many types for unreadable files.
        raise MediaError(path, f"cannot open media file ({type(e).__name__}: {e})") from e


def _declared_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
    else:
        declared = container.duration / av.time_base if container.duration else None
    if stream.type == "video" and stream.frames and stream.average_rate:
        # An AVI header counts the frames the file should hold, while FFmpeg's duration comes from the part of the
        # index it could read: a cut AVI would look complete.
        declared = max(declared or 0.0, stream.frames / float(stream.average_rate))
    return declared


def _wav_declared_seconds(path: str) -> float | None:
    """The duration a RIFF/WAVE file's header declares (its data chunk's size over the fmt chunk's byte rate), or
    None for other files. FFmpeg infers a WAV's length from the bytes present, so a cut WAV would look complete."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None  # no data chunk before the end: FFmpeg's open or decode names the damage
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt " and size >= 16:
                fmt = f.read(size + size % 2)
                byte_rate = struct.unpack("<I", fmt[8:12])[0] if len(fmt) >= 12 else None
            elif chunk_id == b"data":
                # 0 and 0xFFFFFFFF are what streaming writers leave when the length was not known in advance.
                if not byte_rate or size in (0, 0xFFFFFFFF):
                    return None
                return size / byte_rate
            else:
                f.seek(size + size % 2, os.SEEK_CUR)  # chunks are padded to an even size


def _check_complete(path: str, kind: str, decoded: float, declared: float | None, error: Exception | None) -> None:
    """Raises ``MediaError`` when a track decoded clearly shorter than declared (a cut file, or bytes damaged
    mid-stream: the decoder's error is named)."""
    if declared is None or decoded >= declared - max(TRUNCATION_TOLERANCE_S, 0.05 * declared):
        return
    cause = f" ({kind} decode error: {type(error).__name__}: {error})" if error is not None else ""
    raise MediaError(path, f"truncated: decoded {decoded:.2f} of {declared:.2f} s{cause}")


def decode_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """First audio track of ``path`` (wav, m4a, flv, avi, mp4, ...) as float32 mono at ``sample_rate``."""
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, error = [], None
        try:
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except Exception as e:
            if not chunks:  # a damaged tail keeps what decoded before it (if not too short); a damaged head is an error
                raise MediaError(path, f"audio track cannot be decoded ({type(e).__name__}: {e})") from e
            error = e
        declared = _wav_declared_seconds(path) or _declared_seconds(container, stream)
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if wav.size == 0:
        raise MediaError(path, "audio track has no samples")
    _check_complete(path, "audio", wav.size / sample_rate, declared, error)
    return wav.astype(np.float32)


def to_int16(wav: np.ndarray, path: str = "?") -> np.ndarray:
    """Peak-normalised int16 waveform (the papers normalise ``wav / max|wav|``); silence is an error."""
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if not np.isfinite(peak) or peak < 1e-6:
        raise MediaError(path, f"audio is silent (peak {peak:.2g})")
    return np.round(wav * (PEAK * 32767.0 / peak)).astype(np.int16)


def trim_silence(wav: np.ndarray, top_db: float | None) -> tuple[np.ndarray, int]:
    """Leading and trailing silence removed as the DVAE papers' code does (``librosa.effects.trim`` with
    ``top_db``: frames of 2048 samples, hop 512, quieter than the loudest frame by more than ``top_db`` dB);
    returns (trimmed waveform, index of its first sample in ``wav``). ``top_db=None`` keeps ``wav`` whole."""
    if top_db is None:
        return wav, 0
    import librosa  # deferred: only the speech builders trim

    _, (start, end) = librosa.effects.trim(np.asarray(wav, np.float32), top_db=top_db)
    return wav[start:end], int(start)


def video_frames(path: str, fps: float, max_side: int = 640) -> Iterator[np.ndarray]:
    """RGB uint8 frames of the first video track, converted to ``fps`` and scaled to at most ``max_side``.

    Frame-rate conversion keeps, for each output time k/fps, the latest source frame shown at that
    time (FFmpeg's ``fps`` filter behaviour), using the frames' timestamps, so variable frame rates
    and 29.97 vs 30 fps sources stay in sync with the audio.
    """
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(path, "no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_rate = float(stream.average_rate or stream.guessed_rate or fps)
        size, k, count, t0, t = None, 0, 0, 0.0, 0.0
        previous, image = None, None  # the last decoded frame, and its RGB array once converted

        def emit_until(limit):
            nonlocal k, image
            while previous is not None and k / fps < limit - 2e-3:  # container timestamps are ms-rounded
                if image is None:  # convert only frames that are kept
                    image = previous.to_ndarray(format="rgb24", width=size[0], height=size[1])
                yield image
                k += 1

        try:
            for frame in container.decode(stream):
                if size is None:
                    scale = min(1.0, max_side / max(frame.width, frame.height))
                    size = (
                        max(2, int(round(frame.width * scale / 2)) * 2),
                        max(2, int(round(frame.height * scale / 2)) * 2),
                    )
                t = float(frame.time) if frame.time is not None else count / src_rate
                if count == 0:
                    t0 = t
                count += 1
                yield from emit_until(t - t0)
                previous, image = frame, None
        except MediaError:
            raise
        except Exception as e:
            if count == 0:
                raise MediaError(path, f"video track cannot be decoded ({type(e).__name__}: {e})") from e
            error = e  # a damaged tail: the frames decoded so far are kept if they are (nearly) all
        else:
            error = None
        if count == 0:
            raise MediaError(path, "video track has no frames")
        _check_complete(path, "video", t - t0 + 1.0 / src_rate, _declared_seconds(container, stream), error)
        yield from emit_until(t - t0 + 1.0 / src_rate)


def decode_video(path: str, fps: float, max_side: int = 640) -> np.ndarray:
    """All frames of ``video_frames`` as one uint8 array [T, H, W, 3]."""
    return np.stack(list(video_frames(path, fps, max_side)))


def align(wav: np.ndarray, num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Trims audio and video to their common duration: returns (wav, num_frames)."""
    frames = min(num_frames, int(np.floor(wav.size * fps / sample_rate + 1e-6)))
    return wav[: int(round(frames * sample_rate / fps))], frames


_CODECS = {  # extension -> (video codec, audio codec) used by ``write_media``
    ".mp4": ("mpeg4", "aac"),
    ".avi": ("mpeg4", "pcm_s16le"),
    ".flv": ("flv", "mp3"),
    ".m4a": (None, "aac"),
    ".wav": (None, "pcm_s16le"),
}


def write_media(
    path: str,
    video: np.ndarray | None = None,
    fps: int = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> None:
    """Encodes RGB ``video`` [T, H, W, 3] and/or int16 mono ``audio`` into ``path`` (the container from its
    extension: mp4, avi, flv, m4a, wav). Used to make dummy corpora for tests and benchmarks."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _CODECS:
        raise ValueError(f"write_media: {path!r} has extension {ext!r}; expected one of {sorted(_CODECS)}")
    vcodec, acodec = _CODECS[ext]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as out:
        vs = as_ = None
        if video is not None and vcodec:
            vs = out.add_stream(vcodec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
            vs.bit_rate = 2_000_000
        if audio is not None and acodec:
            as_ = out.add_stream(acodec, rate=sample_rate if acodec != "mp3" else 22050)
            as_.layout = "mono"
        if as_ is not None:
            fmt = as_.codec_context.codec.audio_formats[0].name
            resampler = av.AudioResampler(format=fmt, layout="mono", rate=as_.rate)
            frame_size = as_.codec_context.frame_size or 1024
            pcm = np.asarray(audio, np.int16)
            for start in range(0, pcm.size, frame_size):
                chunk = av.AudioFrame.from_ndarray(pcm[None, start : start + frame_size], format="s16", layout="mono")
                chunk.sample_rate = sample_rate
                for f in resampler.resample(chunk):
                    out.mux(as_.encode(f))
            for f in resampler.resample(None):
                out.mux(as_.encode(f))
            out.mux(as_.encode(None))
        if vs is not None:
            for image in video:
                out.mux(vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
            out.mux(vs.encode(None))
