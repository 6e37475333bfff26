"""VoxCeleb2 (Chung et al. 2018): face-track videos of 6112 celebrities, for pre-training (VQ-MAE-AV).

manual_dir layout (the dev and test archives unpacked)::

    <manual_dir>/dev/mp4/id00012/21Uxsk56VDQ/00001.mp4
    <manual_dir>/test/mp4/id00017/01dfn2spqyE/00001.mp4
    <manual_dir>/dev/aac/id00012/21Uxsk56VDQ/00001.m4a   (optional: else the .mp4's own audio)

The videos are face tracks already (224x224, 25 fps), so the default configs only keep the
central 75 % and resize, as the authors' Resize(128) -> CenterCrop(96); ``*_detect`` configs run
the face detector instead. Splits: ``test`` is the test set; dev speakers are split 98/2 into
``train`` and ``validation`` (speaker-disjoint). Preparation runs as an Apache Beam pipeline:
pass ``--beam_runner``/``--beam_option`` flags of data_pipelines.build to use Dataflow, Flink or
Spark at scale; the DirectRunner works for small copies.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from data_pipelines.corpora.base import Clip, CorpusBuilder, Skip, av_configs

_ID, _CLIP = re.compile(r"id\d{5}$"), re.compile(r"(\d{5})\.mp4$")
VALIDATION_FRACTION = 0.02


class Voxceleb2(CorpusBuilder):
    __doc__ = __doc__
    name = "voxceleb2"
    BUILDER_CONFIGS = av_configs(precropped=True, center_crop=0.75)
    EMOTIONS = ("unlabelled",)
    LAYOUT = (
        "  <manual_dir>/<dev|test>/mp4/<speaker id00012>/<youtube id>/<NNNNN>.mp4\n"
        "  <manual_dir>/<dev|test>/aac/<speaker>/<youtube id>/<NNNNN>.m4a   (optional)"
    )
    LAYOUT_GLOBS = ("dev/mp4", "test/mp4")
    BEAM = True

    def _scan(self, root):
        for subset in ("dev", "test"):
            for path in sorted(glob.glob(os.path.join(glob.escape(root), subset, "mp4", "**", "*"), recursive=True)):
                if os.path.isdir(path):
                    continue
                parts = os.path.relpath(path, os.path.join(root, subset, "mp4")).split(os.sep)
                m = _CLIP.match(parts[-1])
                if len(parts) != 3 or not _ID.match(parts[0]) or not m:
                    yield Skip(path, "bad name: expected <dev|test>/mp4/id<NNNNN>/<youtube id>/<NNNNN>.mp4")
                    continue
                audio = os.path.join(root, subset, "aac", *parts[:2], m.group(1) + ".m4a")
                yield Clip(
                    key=f"{parts[0]}_{parts[1]}_{m.group(1)}",
                    speaker=parts[0],
                    emotion="unlabelled",
                    intensity="unspecified",
                    video=path,
                    audio=audio if os.path.isfile(audio) else None,
                    subset=subset,
                )

    def _split_of(self, clips, speakers):
        test = {c.speaker for c in clips if c.subset == "test"}
        dev = [s for s in speakers if s not in test]
        rng = np.random.default_rng(self.SPLIT_SEED)
        n_val = int(len(dev) * VALIDATION_FRACTION)  # none for tiny copies, 2 % of dev speakers at scale
        val = {dev[i] for i in rng.permutation(len(dev))[:n_val]}
        return {s: "test" if s in test else "validation" if s in val else "train" for s in speakers}
