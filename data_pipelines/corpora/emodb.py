"""EmoDB (Burkhardt et al. 2005): Berlin Database of Emotional Speech, 10 speakers, 7 emotions (audio only).

manual_dir layout (the download unpacked)::

    <manual_dir>/wav/03a01Fa.wav

Names are <speaker 2 digits><text a01..b10><emotion letter><version>: W anger (Ärger), L boredom,
E disgust, A fear (Angst), F happiness (Freude), T sadness (Trauer), N neutral.
"""

from __future__ import annotations

import glob
import os
import re

from data_pipelines.corpora.base import Clip, CorpusBuilder, Skip, audio_configs

_EMOTIONS = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}
_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
_NAME = re.compile(r"(\d\d)([ab]\d\d)([WLEAFTN])([a-z])\.wav$")


class Emodb(CorpusBuilder):
    __doc__ = __doc__
    name = "emodb"
    BUILDER_CONFIGS = audio_configs()
    EMOTIONS = tuple(_EMOTIONS.values())
    LAYOUT = "  <manual_dir>/wav/<speaker><text><emotion letter W|L|E|A|F|T|N><version>.wav, e.g. wav/03a01Fa.wav"
    LAYOUT_GLOBS = ("wav",)

    def _scan(self, root):
        for path in sorted(glob.glob(os.path.join(glob.escape(root), "wav", "*"))):
            m = _NAME.match(os.path.basename(path))
            if not m or m.group(1) not in _SPEAKERS:
                yield Skip(path, "bad name: expected <speaker 03..16><a01..b10><W|L|E|A|F|T|N><version>.wav")
                continue
            yield Clip(
                key=os.path.basename(path)[:-4],
                speaker=m.group(1),
                emotion=_EMOTIONS[m.group(3)],
                intensity="unspecified",
                video=None,
                audio=path,
            )
