"""Any folder of speech recordings (WSJ0, VoiceBank, TIMIT, LibriSpeech, your own): the DVAE family's data.

manual_dir layout: audio files anywhere below it (wav, flac, NIST SPHERE, mp3, ...; any sample rate and
channel count: decoded to 16 kHz mono; WSJ0's shorten-compressed .wv1 files must be converted first, e.g. with
sph2pipe, or the manifest lists them as unreadable), by default one directory per speaker::

    <manual_dir>/<speaker>/.../<utterance>.wav        e.g. LibriSpeech train-clean-100/19/198/19-198-0001.flac
    <manual_dir>/train.txt, validation.txt, test.txt  optional split lists (below)

Each file becomes one record of ``schema.speech_features`` (no video): its waveform peak-normalised to int16,
with leading and trailing silence trimmed at ``trim_db`` (30 dB, as the DVAE papers' code does), and
``trim_start``. ``utterance_id`` is the path below manual_dir without its extension.

Splits, in this order of precedence:
  1. split lists: if manual_dir holds any of train.txt / validation.txt / test.txt, each line names a file
     (with or without its extension) or a directory below manual_dir (``#`` starts a comment); the most
     specific entry decides. WSJ0: train.txt = si_tr_s, validation.txt = si_dt_05, test.txt = si_et_05.
     Files in no list, and entries that match no file, are listed in the manifest.
  2. speaker-disjoint 75/15/10 (seeded, as the other corpora) when speakers are known: by default the first
     directory level below manual_dir (``speaker_level``), or the first group of ``speaker_pattern`` (a
     regular expression searched in the relative path, e.g. VoiceBank ``(p\\d+)_\\d+\\.wav$``).
  3. otherwise (``speaker_level=0``, no file below a speaker directory, or fewer than 3 speakers), by
     utterance, with a warning: validation and test speakers then also speak in training.

Configs: ``speech`` (the options' defaults) and ``speech_untrimmed`` (``trim_db`` None: e.g. clean / noisy
pairs that must stay aligned). Other options make a custom config with its own name::

    python -m data_pipelines.build speech_folder --config wsj0 --manual_dir ~/data/wsj0 \\
        --option speaker_level=2 --data_dir ~/tensorflow_datasets      # then data.name = speech_folder/wsj0

Files left out (not audio, empty, unreadable, silent, too short, no speaker, in no split list) are listed
with their reason in ``manifest.json``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import warnings

import tensorflow_datasets as tfds

from data_pipelines import media, schema
from data_pipelines.corpora.base import UNSPECIFIED, Clip, CorpusBuilder, Skip, write_part
from data_pipelines.spec import DataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".sph", ".wv1", ".wv2", ".nist", ".mp3", ".ogg", ".opus", ".m4a", ".aif", ".aiff")
SPLIT_LISTS = {"train": "train.txt", "validation": "validation.txt", "test": "test.txt"}


@dataclasses.dataclass
class SpeechFolderConfig(tfds.core.BuilderConfig):
    speaker_level: int = 1  # speaker = the directory this many levels below manual_dir; 0: speakers unknown
    speaker_pattern: str = ""  # if set: speaker = group 1 of this regex searched in the path below manual_dir
    trim_db: float | None = 30.0  # leading / trailing silence quieter than the loudest frame by this; None: keep
    hop: int = 256  # the STFT hop that ``min_frames`` counts in (the DVAE family's)
    min_frames: int = 50  # shorter utterances (centred STFT frames, after trimming) are skipped: one window
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS  # files with other extensions are listed as not audio

    def __post_init__(self):
        if self.speaker_pattern and re.compile(self.speaker_pattern).groups < 1:
            raise ValueError(f"speaker_pattern {self.speaker_pattern!r} needs a group: (...) around the speaker")
        if self.speaker_level < 0 or self.hop < 1 or self.min_frames < 1:
            raise ValueError(f"speaker_level >= 0, hop >= 1 and min_frames >= 1 expected, got {self}")


def process_speech(clip: Clip, opts: dict) -> tuple[str, dict] | Skip:
    """Decodes (16 kHz mono), peak-normalises and trims one file into a record, or says why it cannot."""
    path = clip.audio
    try:
        if os.path.getsize(path) == 0:
            return Skip(path, "empty file (0 bytes)")
        audio = media.to_int16(media.decode_audio(path), path)  # MediaError: unreadable, no samples, silent
        audio, start = media.trim_silence(audio, opts["trim_db"])
        frames = 1 + audio.size // opts["hop"]
        if frames < opts["min_frames"]:
            trimmed = f", silence trimmed at {opts['trim_db']} dB" if opts["trim_db"] is not None else ""
            return Skip(
                path,
                f"too short: {frames} STFT frames (hop {opts['hop']}{trimmed}), "
                f"fewer than one training window of {opts['min_frames']}",
            )
    except media.MediaError as e:
        return Skip(e.path, e.reason)
    except Exception as e:  # a decoder failing in an unforeseen way on a bad file: recorded, not fatal
        return Skip(path, f"unexpected {type(e).__name__}: {e}")
    speaker = clip.speaker or UNSPECIFIED
    return clip.key, {
        "utterance_id": clip.key,
        "speaker": speaker,
        "speaker_index": opts["speakers"][speaker],
        "audio": audio,
        "trim_start": start,
    }


def _read_split_lists(root: str) -> dict[str, tuple[str, str]] | None:
    """Entry (a relative path, no trailing slash) -> (split, list file), or None when there are no lists."""
    entries: dict[str, tuple[str, str]] = {}
    found = False
    for split, name in SPLIT_LISTS.items():
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        found = True
        with open(path) as f:
            for number, line in enumerate(f, 1):
                entry = line.split("#", 1)[0].strip().replace("\\", "/").strip("/")
                if entry.startswith("./"):
                    entry = entry[2:]
                if not entry:
                    continue
                if entry in entries and entries[entry][0] != split:
                    raise DataError(f"{path}:{number}: {entry!r} is also listed in {entries[entry][1]}")
                entries[entry] = (split, name)
    return entries if found else None


class SpeechFolder(CorpusBuilder):
    __doc__ = __doc__
    name = "speech_folder"
    BUILDER_CONFIGS = [
        SpeechFolderConfig(name="speech", description="16 kHz speech, silence trimmed at 30 dB; >= 50 frames"),
        SpeechFolderConfig(
            name="speech_untrimmed", trim_db=None, description="16 kHz speech, not trimmed; >= 50 frames"
        ),
    ]
    PROCESS = staticmethod(process_speech)
    LAYOUT = (
        "  <manual_dir>/<speaker>/.../<utterance>.{wav,flac,...} (any depth; speaker_level / speaker_pattern say "
        "where the speaker is)\n  optional <manual_dir>/train.txt, validation.txt, test.txt: relative paths"
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=tfds.features.FeaturesDict(schema.speech_features()),
            metadata=tfds.core.MetadataDict(
                sample_rate=media.SAMPLE_RATE,
                speaker_level=cfg.speaker_level,
                speaker_pattern=cfg.speaker_pattern,
                trim_db=cfg.trim_db,
                hop=cfg.hop,
                min_frames=cfg.min_frames,
                extensions=list(cfg.extensions),
            ),
            disable_shuffling=True,  # utterance-id order; Grain shuffles at read time
        )

    @classmethod
    def check_manual_dir(cls, root: str | None) -> str:
        if not root or not os.path.isdir(root):
            raise DataError(f"{cls.name}: manual_dir {root!r} is not a directory; expected:\n{cls.LAYOUT}")
        root = os.path.abspath(root)
        for _, _, files in os.walk(root, followlinks=True):
            if any(f.lower().endswith(AUDIO_EXTENSIONS) for f in files):
                return root
        raise DataError(
            f"{cls.name}: manual_dir {root!r} holds no audio file ({', '.join(AUDIO_EXTENSIONS)}); "
            f"expected:\n{cls.LAYOUT}"
        )

    def _speaker(self, rel: str) -> str:
        """The speaker of the file at ``rel`` (below manual_dir, '/'-separated), '' when unknown."""
        cfg = self.builder_config
        if cfg.speaker_pattern:
            m = re.search(cfg.speaker_pattern, rel)
            return m.group(1) if m else ""
        parts = rel.split("/")
        return parts[cfg.speaker_level - 1] if 0 < cfg.speaker_level < len(parts) else ""

    def _scan(self, root):
        extensions = tuple(e.lower() for e in self.builder_config.extensions)
        for directory, subdirs, files in os.walk(root, followlinks=True):
            subdirs.sort()
            for name in sorted(files):
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                if rel in SPLIT_LISTS.values():
                    continue
                stem, ext = os.path.splitext(rel)
                if ext.lower() not in extensions:
                    yield Skip(path, f"not an audio file: extension {ext or '(none)'!r} is not one of {extensions}")
                    continue
                yield Clip(stem, self._speaker(rel), UNSPECIFIED, UNSPECIFIED, video=None, audio=path)

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(str(dl_manager.manual_dir))
        clips, skips = self._scan_clips(root)
        lists = _read_split_lists(root)
        if lists is not None:
            split_by, split, more = "lists", *self._split_by_lists(root, clips, lists)
        else:
            known = [c for c in clips if c.speaker]
            speakers = sorted({c.speaker for c in known})
            if len(speakers) >= 3:
                split_by, by_speaker = "speaker", self._split_of(known, speakers)
                split = {c.key: by_speaker[c.speaker] for c in known}
                more = [Skip(c.path, f"no speaker: {self._no_speaker_reason()}") for c in clips if not c.speaker]
            else:
                cfg = self.builder_config
                if speakers:
                    why = f"only {len(speakers)} speakers found ({', '.join(speakers)})"
                elif cfg.speaker_level == 0 and not cfg.speaker_pattern:
                    why = "speakers unknown (speaker_level 0)"
                else:
                    why = f"no file has a speaker ({self._no_speaker_reason()})"
                self._warn(f"{why}; splitting by utterance, so validation and test speakers also speak in training")
                split_by, more = "utterance", []
                split = self._split_of(clips, sorted(c.key for c in clips))
        write_part(self.data_dir, "scan", skips + more)
        clips = [c for c in clips if c.key in split]
        if not clips:
            raise DataError(f"{self.name}: no file under manual_dir {root!r} is in a split; see the manifest")
        splits_of, by_split = collections.defaultdict(set), collections.defaultdict(list)
        for c in clips:
            splits_of[c.speaker or UNSPECIFIED].add(split[c.key])
            by_split[split[c.key]].append(c)
        self.info.metadata["manual_dir"] = root
        self.info.metadata["split_by"] = split_by  # "lists" | "speaker" | "utterance"
        self.info.metadata["speakers"] = {
            s: {"index": i, "splits": sorted(splits_of[s])} for i, s in enumerate(sorted(splits_of))
        }
        return {
            name: self._generate_examples(name, sorted(by_split[name], key=lambda c: c.key))
            for name in ("train", "validation", "test")
            if by_split[name]
        }

    def _no_speaker_reason(self) -> str:
        cfg = self.builder_config
        if cfg.speaker_pattern:
            return f"the path does not match speaker_pattern {cfg.speaker_pattern!r}"
        return f"the file does not lie below a speaker directory at speaker_level {cfg.speaker_level}"

    def _split_by_lists(self, root, clips, lists):
        """Clip key -> split from the lists' most specific entry; skips for unlisted files and unmatched entries."""
        split, skips, matched = {}, [], set()
        for c in clips:
            rel = os.path.relpath(c.path, root).replace(os.sep, "/")
            parts = c.key.split("/")
            paths = [rel, c.key] + ["/".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]
            candidates = [e for e in paths if e in lists]  # most specific first
            matched.update(candidates)
            if candidates:
                split[c.key] = lists[candidates[0]][0]
            else:
                skips.append(Skip(c.path, f"not in any split list ({', '.join(SPLIT_LISTS.values())})"))
        for entry, (_, name) in sorted(lists.items()):
            if entry not in matched:
                skips.append(Skip(os.path.join(root, entry), f"listed in {name} but not found under manual_dir"))
        return split, skips

    def _warn(self, message: str) -> None:
        message = f"{self.name}/{self.builder_config.name}: {message}"
        warnings.warn(message, stacklevel=3)
        print(f"[avrep] warning: {message}", flush=True)

    def _options(self) -> dict:
        cfg = self.builder_config
        return dict(
            trim_db=cfg.trim_db,
            hop=cfg.hop,
            min_frames=cfg.min_frames,
            speakers={s: v["index"] for s, v in self.info.metadata["speakers"].items()},
        )
