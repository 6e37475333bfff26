"""IEMOCAP (Busso et al. 2008): 5 sessions x 2 actors, dyadic improvised and scripted speech (audio only).

manual_dir layout (IEMOCAP_full_release)::

    <manual_dir>/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    <manual_dir>/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt

Labels come from the EmoEvaluation lines ``[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]``.
The standard 4 classes are kept: neutral, happy (with "exc", excited, merged in), angry, sad;
utterances with other labels are listed in the manifest. (The VQ-MAE-S thesis writes
"disgusted" for the 4th class, almost certainly a slip: IEMOCAP has 2 disgust utterances.)
The speaker is the utterance's actor (Ses01F, Ses01M, ...); folds are the 5 sessions
(leave-one-session-out), stored in the dataset metadata.
"""

from __future__ import annotations

import glob
import os
import re

from data_pipelines.corpora.base import Clip, CorpusBuilder, Skip, audio_configs

_CLASSES = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t")
_UTTERANCE = re.compile(r"Ses(\d\d)[FM]_\w+_([FM])\d{3}$")


class Iemocap(CorpusBuilder):
    __doc__ = __doc__
    name = "iemocap"
    BUILDER_CONFIGS = audio_configs()
    EMOTIONS = ("neutral", "happy", "angry", "sad")
    LAYOUT = (
        "  <manual_dir>/Session<1-5>/sentences/wav/<dialog>/<utterance>.wav\n"
        "  <manual_dir>/Session<1-5>/dialog/EmoEvaluation/<dialog>.txt"
    )
    LAYOUT_GLOBS = ("Session*/sentences/wav",)

    def _scan(self, root):
        labels = {}
        for txt in sorted(glob.glob(os.path.join(glob.escape(root), "Session*", "dialog", "EmoEvaluation", "*.txt"))):
            with open(txt, errors="replace") as f:
                labels.update({m.group(1): m.group(2) for m in map(_LINE.match, f) if m})
        for path in sorted(glob.glob(os.path.join(glob.escape(root), "Session*", "sentences", "wav", "*", "*"))):
            utt = os.path.basename(path)[:-4]
            m = _UTTERANCE.match(utt)
            if not path.endswith(".wav") or not m:
                yield Skip(
                    path, "bad name: expected Session<k>/sentences/wav/<dialog>/Ses<kk><F|M>_<dialog>_<F|M><NNN>.wav"
                )
            elif utt not in labels:
                yield Skip(path, "no label: utterance not in its session's dialog/EmoEvaluation/*.txt")
            elif labels[utt] not in _CLASSES:
                yield Skip(path, f"label outside the 4 classes: {labels[utt]!r}")
            else:
                yield Clip(
                    key=utt,
                    speaker=f"Ses{m.group(1)}{m.group(2)}",
                    emotion=_CLASSES[labels[utt]],
                    intensity="unspecified",
                    video=None,
                    audio=path,
                    subset=f"Session{int(m.group(1))}",
                )

    def _fold_of(self, clips, speakers):
        session = {c.speaker: int(c.subset[len("Session") :]) - 1 for c in clips}
        return {s: session[s] for s in speakers}
