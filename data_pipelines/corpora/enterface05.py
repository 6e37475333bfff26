"""eNTERFACE'05 (Martin et al. 2006): 43 subjects, 6 elicited emotions, 5 sentences each.

manual_dir layout (the distributed archive unpacked)::

    <manual_dir>/subject 1/anger/sentence 1/s1_an_1.avi

The release is irregular (some subjects lack the sentence folders, a few names are written
``s_<n>_...``), so clips are found by file name anywhere under ``subject <n>/``: the subject comes
from the top folder, the emotion from the name's code (an, di, fe, ha, sa, su). No intensity labels.
"""

from __future__ import annotations

import glob
import os
import re

from data_pipelines.corpora.base import Clip, CorpusBuilder, Skip, av_configs

_EMOTIONS = {"an": "anger", "di": "disgust", "fe": "fear", "ha": "happiness", "sa": "sadness", "su": "surprise"}
_NAME = re.compile(r"s_?(\d+)_(an|di|fe|ha|sa|su)_(\d+)\.avi$", re.IGNORECASE)
_SUBJECT = re.compile(r"subject (\d+)$")


class Enterface05(CorpusBuilder):
    __doc__ = __doc__
    name = "enterface05"
    BUILDER_CONFIGS = av_configs()
    EMOTIONS = tuple(_EMOTIONS.values())
    LAYOUT = "  <manual_dir>/subject <n>/<emotion>/sentence <k>/s<n>_<an|di|fe|ha|sa|su>_<k>.avi"
    LAYOUT_GLOBS = ("subject *",)

    def _scan(self, root):
        for path in sorted(glob.glob(os.path.join(glob.escape(root), "subject *", "**", "*"), recursive=True)):
            if os.path.isdir(path):
                continue
            subject = os.path.relpath(path, root).split(os.sep)[0]
            m, s = _NAME.match(os.path.basename(path)), _SUBJECT.match(subject)
            if not m or not s:
                yield Skip(path, "bad name: expected subject <n>/.../s<n>_<an|di|fe|ha|sa|su>_<k>.avi")
                continue
            code = m.group(2).lower()
            yield Clip(
                key=f"s{s.group(1)}_{code}_{m.group(3)}",
                speaker=subject,
                emotion=_EMOTIONS[code],
                intensity="unspecified",
                video=path,
            )
