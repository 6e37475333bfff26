"""SynthAV utterances written as media files: dummy corpora for the builder tests and benchmarks.

The rendered face (a crop) is placed in a larger frame with a plain background, so the Haar
detector has to find it as in a real recording (it does: the cascade detects SynthAV faces).
"""

from __future__ import annotations

import functools

import numpy as np

from data_pipelines import media
from data_pipelines.synthav import generator


@functools.lru_cache(maxsize=64)
def utterance(speaker: int, fps: int, seconds: float = 1.3, face_size: int = 96, seed: int = 0) -> tuple:
    """(frames [T, H, W, 3] with the face placed left of centre, int16 audio) of one SynthAV utterance."""
    spk = generator.make_speakers(speaker + 1, seed)[speaker]
    utt = generator.synthesize_utterance(
        spk,
        speaker % len(generator.EMOTIONS),
        1,
        seed=speaker,
        image_size=face_size,
        fps=fps,
        min_seconds=seconds,
        max_seconds=seconds,
    )
    h, w = int(face_size * 1.5), int(face_size * 2)
    frames = np.empty((len(utt["video"]), h, w, 3), np.uint8)
    frames[:] = (70, 90, 110)
    top, left = (h - face_size) // 2, (w - face_size) // 3
    frames[:, top : top + face_size, left : left + face_size] = utt["video"]
    return frames, utt["audio"]


def write_clip(
    path: str, speaker: int, fps: int = 30, kind: str = "av", seconds: float = 1.3, audio_path: str | None = None
) -> None:
    """Writes one clip. kind: av | video_only | audio | short | no_face | silent (good, plus a flaw), or a damaged
    file: truncated (the first 400 bytes), cut (the first 75 %: a copy that stopped early), corrupt (header bytes
    scrambled), cut_audio (the separate ``audio_path`` file cut at 75 %).

    ``audio_path`` also writes the audio as a separate file (MEAD's .m4a beside the .mp4).
    """
    frames, audio = utterance(speaker, fps, seconds)
    if kind == "short":
        frames, audio = frames[: int(0.5 * fps)], audio[: media.SAMPLE_RATE // 2]
    if kind == "no_face":
        frames = np.full_like(frames, 128)
    if kind == "silent":
        audio = np.zeros_like(audio)
    if kind == "audio":
        media.write_media(path, audio=audio)
    else:  # a .wav path keeps the audio only
        media.write_media(path, frames, fps, None if kind == "video_only" else audio)
    if audio_path:
        media.write_media(audio_path, audio=audio)
    damage = {
        "truncated": lambda data: data[: min(len(data) // 3, 400)],
        "cut": lambda data: data[: len(data) * 3 // 4],
        "cut_audio": lambda data: data[: len(data) * 3 // 4],
        "corrupt": lambda data: data[:16] + bytes(b ^ 0x5A for b in data[16:48]) + data[48:],
    }.get(kind)
    if damage is not None:
        damaged = audio_path if kind == "cut_audio" else path
        with open(damaged, "rb") as f:
            data = f.read()
        with open(damaged, "wb") as f:
            f.write(damage(data))
