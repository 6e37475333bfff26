"""CREMA-D (Cao et al. 2014): 91 actors, 12 sentences, 6 emotions, 4 intensity labels.

manual_dir layout (the repository's folders)::

    <manual_dir>/VideoFlash/1001_DFA_ANG_XX.flv
    <manual_dir>/AudioWAV/1001_DFA_ANG_XX.wav      (optional: else the .flv's own audio)

Names are <actor>_<sentence>_<emotion>_<intensity>; intensity LO/MD/HI or XX (unspecified).
"""

from __future__ import annotations

import glob
import os
import re

from data_pipelines.corpora.base import Clip, CorpusBuilder, Skip, av_configs

_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
_INTENSITIES = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
_NAME = re.compile(r"(1\d{3})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.flv$")


class CremaD(CorpusBuilder):
    __doc__ = __doc__
    name = "cremad"
    BUILDER_CONFIGS = av_configs()
    EMOTIONS = tuple(_EMOTIONS.values())
    INTENSITIES = tuple(_INTENSITIES.values())
    LAYOUT = "  <manual_dir>/VideoFlash/<actor>_<sentence>_<EMO>_<LO|MD|HI|XX>.flv\n  <manual_dir>/AudioWAV/<same>.wav"
    LAYOUT_GLOBS = ("VideoFlash",)

    def _scan(self, root):
        for path in sorted(glob.glob(os.path.join(glob.escape(root), "VideoFlash", "*"))):
            m = _NAME.match(os.path.basename(path))
            if not m or m.group(2) not in _SENTENCES or m.group(3) not in _EMOTIONS or m.group(4) not in _INTENSITIES:
                yield Skip(
                    path, "bad name: expected <1001-1091>_<sentence>_<ANG|DIS|FEA|HAP|NEU|SAD>_<LO|MD|HI|XX>.flv"
                )
                continue
            stem = os.path.basename(path)[:-4]
            audio = os.path.join(root, "AudioWAV", stem + ".wav")
            yield Clip(
                key=stem,
                speaker=m.group(1),
                emotion=_EMOTIONS[m.group(3)],
                intensity=_INTENSITIES[m.group(4)],
                video=path,
                audio=audio if os.path.isfile(audio) else None,
            )
