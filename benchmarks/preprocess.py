"""Corpus preprocessing throughput: seconds of speech prepared per wall second per core, by stage.

A dummy RAVDESS-layout tree (SynthAV faces placed in 640x360 frames, MPEG-4 Part 2 video at 30 fps with
AAC audio at 48 kHz) or an EmoDB-layout tree (48 kHz wav) is built end to end by the real builder on
one worker process (one core); a second pass runs the per-clip processing alone to split the time
into decode (demux, decode, resample, frame-rate conversion), detection (Haar cascade, smoothing),
resize (crop and resize) and write (the rest of the build: TFDS encoding, ArrayRecord writing,
shuffling, statistics).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from data_pipelines import media
from data_pipelines.build import build
from data_pipelines.corpora import base, builder_class
from data_pipelines.synthav import generator


def _av_tree(root: str, clips: int, seconds: float) -> list[str]:
    """RAVDESS-named AV clips: a 160 px SynthAV face in a 640x360 frame (RAVDESS is 1280x720)."""
    paths = []
    for i in range(clips):
        speaker = generator.make_speakers(i + 1, 0)[i]
        utt = generator.synthesize_utterance(
            speaker, i % 8, 1, seed=i, image_size=160, fps=30, min_seconds=seconds, max_seconds=seconds
        )
        frames = np.empty((len(utt["video"]), 360, 640, 3), np.uint8)
        frames[:] = (70, 90, 110)
        frames[:, 100:260, 240:400] = utt["video"]
        audio48 = np.interp(np.arange(len(utt["audio"]) * 3) / 3, np.arange(len(utt["audio"])), utt["audio"])
        actor = i % 4 + 1
        path = os.path.join(root, f"Actor_{actor:02d}", f"01-01-{i % 8 + 1:02d}-01-01-{i // 8 + 1:02d}-{actor:02d}.mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        media.write_media(path, frames, 30, audio48.astype(np.int16), sample_rate=48000)
        paths.append(path)
    return paths


def _audio_tree(root: str, clips: int, seconds: float) -> None:
    speakers = ("03", "08", "09", "10", "11")
    for i in range(clips):
        speaker = generator.make_speakers(i + 1, 0)[i]
        utt = generator.synthesize_utterance(
            speaker, i % 8, 1, seed=i, image_size=8, fps=30, min_seconds=seconds, max_seconds=seconds
        )
        audio48 = np.interp(np.arange(len(utt["audio"]) * 3) / 3, np.arange(len(utt["audio"])), utt["audio"])
        name = f"{speakers[i % 5]}a{i // 5 + 1:02d}{'WLEAFTN'[i % 7]}a.wav"
        media.write_media(os.path.join(root, "wav", name), audio=audio48.astype(np.int16), sample_rate=48000)


def bench_preprocess(name: str, corpus: str, config: str, clips: int = 8, seconds: float = 3.0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root, data_dir = os.path.join(tmp, "src"), os.path.join(tmp, "tfds")
        (_av_tree if corpus != "emodb" else _audio_tree)(root, clips, seconds)
        cls = builder_class(corpus)
        t = time.perf_counter()
        build(corpus, config, root, data_dir, num_workers=1)
        total = time.perf_counter() - t
        # The stages alone, on the same clips (the builder's own scan and per-clip function).
        builder = cls(config=config, data_dir=data_dir)
        clip_list = [c for c in builder._scan(os.path.abspath(root)) if isinstance(c, base.Clip)]
        cfg = builder.builder_config
        opts = dict(
            fps=cfg.fps,
            min_frames=cfg.min_frames,
            image_size=cfg.image_size,
            precropped=cfg.precropped,
            decode_side=cfg.decode_side,
            face=cfg.face,
            speakers={c.speaker: 0 for c in clip_list},
        )
        timings: dict[str, float] = {}
        results = [base.process_clip(c, opts, timings) for c in clip_list]
        skipped = [r for r in results if isinstance(r, base.Skip)]
        speech = sum(r[1]["audio"].size for r in results if not isinstance(r, base.Skip)) / media.SAMPLE_RATE
    stages = {k: round(v, 3) for k, v in timings.items()}
    stages["write"] = round(max(total - sum(timings.values()), 0.0), 3)
    return {
        "name": name,
        "throughput": round(speech / total, 2),
        "unit": "speech s / wall s / core",
        "batch": len(clip_list),
        "params": 0,
        "dataset": f"{corpus}/{config} (dummy tree, {seconds:.0f} s clips)",
        "speech_seconds": round(speech, 1),
        "wall_s": round(total, 2),
        "cores": 1,
        "seconds_by_stage": stages,
        "share_by_stage": {k: round(v / total, 3) for k, v in stages.items()},
        "skipped": len(skipped),
        "device": f"host CPU, 1 worker process ({os.cpu_count()} cores present)",
    }
