"""RAVDESS (Livingstone & Russo 2018): 24 actors, 8 emotions, 2 intensities; audiovisual speech files.

manual_dir layout (the Video_Speech_Actor_NN.zip archives unpacked side by side)::

    <manual_dir>/Actor_01/01-01-06-01-02-01-01.mp4

File names are modality-channel-emotion-intensity-statement-repetition-actor. Only audiovisual
(modality 01) speech (channel 01) files are used, as the VQ-MAE-AV code did; video-only (02)
and song files are listed in the manifest as skipped, with the reason.

Config ``audio`` (RAVDESS-Speech of VQ-MAE-S, [Sadok-thesis] Table C.3: 1440 files, 24 actors) reads the
audio-only speech files (modality 03, channel 01) of Audio_Speech_Actors_01-24.zip, unpacked the same way
(``<manual_dir>/Actor_01/03-01-06-01-02-01-01.wav``), stored with 1x1 placeholder frames as every audio-only
corpus; the other files are listed as skipped.
"""

from __future__ import annotations

import glob
import os
import re

from data_pipelines.corpora.base import Clip, CorpusBuilder, Skip, audio_configs, av_configs

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
_NAME = re.compile(r"(\d\d)-(\d\d)-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)\.(mp4|wav)$")


class Ravdess(CorpusBuilder):
    __doc__ = __doc__
    name = "ravdess"
    BUILDER_CONFIGS = av_configs() + audio_configs()
    EMOTIONS = EMOTIONS
    INTENSITIES = ("normal", "strong")
    LAYOUT = (
        "  <manual_dir>/Actor_<NN>/<modality>-<channel>-<emotion>-<intensity>-<statement>-<repetition>-<NN>.mp4 "
        "(config audio: .wav, modality 03)"
    )
    LAYOUT_GLOBS = ("Actor_*",)

    def _scan(self, root):
        audio_only = self.builder_config.name == "audio"
        # (modality, extension, what it is) of the files this config reads
        modality, extension, kind = ("03", "wav", "audio-only") if audio_only else ("01", "mp4", "audiovisual")
        for path in sorted(glob.glob(os.path.join(glob.escape(root), "Actor_*", "*"))):
            folder, name = os.path.basename(os.path.dirname(path)), os.path.basename(path)
            m = _NAME.match(name)
            if not m or folder != f"Actor_{m.group(7)}":
                yield Skip(path, "bad name: expected Actor_NN/MM-CC-EE-II-SS-RR-NN.mp4|wav with the folder's actor")
            elif m.group(1) != modality or m.group(8) != extension:
                yield Skip(path, f"not {kind}: modality {m.group(1)} (only {modality}, {kind} .{extension}, is used)")
            elif m.group(2) != "01":
                yield Skip(path, f"not speech: vocal channel {m.group(2)} (song; only 01, speech, is used)")
            else:
                yield Clip(
                    key=name[:-4],
                    speaker=folder,
                    emotion=EMOTIONS[int(m.group(3)) - 1],
                    intensity=self.INTENSITIES[int(m.group(4)) - 1],
                    video=None if audio_only else path,
                    audio=path if audio_only else None,
                )
