"""MEAD (Wang et al. 2020): 60 actors, 8 emotions x 3 intensities, frontal view (MDVAE's corpus).

manual_dir layout (each actor's video.tar and audio.tar unpacked in the actor's folder)::

    <manual_dir>/M003/video/front/angry/level_1/001.mp4
    <manual_dir>/M003/audio/angry/level_1/001.m4a

Only the frontal view is read (other views are ignored by design). Audio comes from the .m4a
beside each video, or from the video's own track when the .m4a is missing. Splits are
speaker-disjoint 75/15/10 ([MDVAE] Sec. 3.1). The authors used OpenFace-aligned crops; with your
own aligned crops in the same layout use the ``*_precropped`` configs.
"""

from __future__ import annotations

import glob
import os
import re

from data_pipelines.corpora.base import Clip, CorpusBuilder, Skip, av_configs

EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
_SPEAKER, _NAME = re.compile(r"[MW]\d{3}$"), re.compile(r"(\d{3})\.mp4$")


class Mead(CorpusBuilder):
    __doc__ = __doc__
    name = "mead"
    BUILDER_CONFIGS = av_configs()
    EMOTIONS = EMOTIONS
    INTENSITIES = ("level_1", "level_2", "level_3")
    LAYOUT = (
        "  <manual_dir>/<actor, e.g. M003>/video/front/<emotion>/level_<1-3>/<NNN>.mp4\n"
        "  <manual_dir>/<actor>/audio/<emotion>/level_<1-3>/<NNN>.m4a"
    )
    LAYOUT_GLOBS = ("*/video/front",)

    def _scan(self, root):
        for path in sorted(
            glob.glob(os.path.join(glob.escape(root), "*", "video", "front", "**", "*"), recursive=True)
        ):
            if os.path.isdir(path):
                continue
            parts = os.path.relpath(path, root).split(os.sep)
            match = _NAME.match(parts[-1])
            if (
                len(parts) != 6
                or not _SPEAKER.match(parts[0])
                or parts[3] not in EMOTIONS
                or parts[4] not in self.INTENSITIES
                or not match
            ):
                yield Skip(path, "bad name: expected <actor>/video/front/<emotion>/level_<1-3>/<NNN>.mp4")
                continue
            speaker, emotion, level = parts[0], parts[3], parts[4]
            audio = os.path.join(root, speaker, "audio", emotion, level, match.group(1) + ".m4a")
            yield Clip(
                key=f"{speaker}_{emotion}_{level}_{match.group(1)}",
                speaker=speaker,
                emotion=emotion,
                intensity=level,
                video=path,
                audio=audio if os.path.isfile(audio) else None,
            )
