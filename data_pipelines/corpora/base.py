"""What every real-corpus TFDS builder shares: configs, schema, scan -> split -> process, skip manifest.

A corpus module only says where its files are and how their names encode labels (``_scan``). This
class checks the ``manual_dir`` layout, assigns speaker-disjoint splits and cross-validation folds
deterministically (stored in the dataset's ``metadata.json``), decodes and crops every clip (in
worker processes, or as an Apache Beam pipeline for builders with ``BEAM = True``), and records
every file it skips, with the reason, in ``manifest.json`` beside the dataset.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import glob
import json
import multiprocessing
import os
import time
from typing import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import faces, media, schema
from data_pipelines.spec import DataError

MANIFEST = "manifest.json"
_PARTS = "manifest_parts"  # per-stage skip lists, merged into MANIFEST when the build ends
NUM_FOLDS = 5
SPLIT_FRACTIONS = {"validation": 0.15, "test": 0.10}  # the rest is train (MEAD protocol, [MDVAE] Sec. 3.1)
AUDIO_ONLY_RATE = 100  # audio-only corpora: one 1x1 black video frame per 10 ms (never limits hops >= 160)
UNSPECIFIED = "unspecified"


@dataclasses.dataclass(frozen=True)
class Clip:
    """One utterance found in ``manual_dir``: its labels and files (paths absolute)."""

    key: str  # utterance_id, unique in the corpus
    speaker: str
    emotion: str  # one of the builder's EMOTIONS
    intensity: str  # one of the builder's INTENSITIES
    video: str | None  # video file (None: audio-only corpus)
    audio: str | None = None  # separate audio file (None: the video's own audio track)
    subset: str = ""  # corpus-specific grouping (VoxCeleb2 dev/test, IEMOCAP session)

    @property
    def path(self) -> str:
        return self.video or self.audio or self.key


@dataclasses.dataclass(frozen=True)
class Skip:
    """A file left out of the dataset, and why (one manifest row)."""

    file: str
    reason: str


@dataclasses.dataclass
class CorpusConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    fps: int = 30
    min_frames: int = 30  # clips shorter than one training window are skipped
    precropped: bool = False  # frames are face crops already: centre-crop and resize only
    decode_side: int = 640  # frames are decoded scaled to at most this longer side
    face: faces.FaceOptions = dataclasses.field(default_factory=faces.FaceOptions)


def av_configs(precropped: bool = False, center_crop: float = 1.0, variants: bool = True) -> list[CorpusConfig]:
    """The two paper settings (configs/common.py SETTINGS); ``variants`` adds the other face source."""
    out = []
    for sources in [precropped, not precropped] if variants else [precropped]:
        suffix = "" if sources == precropped else ("_precropped" if sources else "_detect")
        face = faces.FaceOptions(center_crop=center_crop if sources else 1.0)
        how = "pre-cropped faces resized" if sources else "Haar-detected face crops"
        out += [
            CorpusConfig(
                name="mdvae" + suffix,
                image_size=64,
                fps=30,
                min_frames=30,
                precropped=sources,
                face=face,
                description=f"MDVAE setting: {how} to 64x64 @ 30 fps; >= 30 frames",
            ),
            CorpusConfig(
                name="vqmae" + suffix,
                image_size=96,
                fps=25,
                min_frames=50,
                precropped=sources,
                face=face,
                description=f"VQ-MAE setting: {how} to 96x96 @ 25 fps; >= 50 frames",
            ),
        ]
    return out


def audio_configs() -> list[CorpusConfig]:
    return [
        CorpusConfig(
            name="audio",
            image_size=1,
            fps=AUDIO_ONLY_RATE,
            min_frames=AUDIO_ONLY_RATE,
            description="audio only (VQ-MAE-S): 16 kHz waveform; >= 1 s",
        )
    ]


def process_clip(clip: Clip, opts: dict, timings: dict | None = None) -> tuple[str, dict] | Skip:
    """Decodes, aligns and crops one clip into an example, or says why it cannot (a Skip).

    Module-level so that worker processes and Beam workers can run it; ``timings`` (if given)
    accumulates seconds per stage: decode, detect, resize.
    """
    t = time.perf_counter()
    timings = timings if timings is not None else {}

    def lap(stage):
        nonlocal t
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - t
        t = now

    fps, min_frames = opts["fps"], opts["min_frames"]
    try:
        wav = media.decode_audio(clip.audio or clip.video)
        if clip.video is None:
            n = 1 + wav.size // (media.SAMPLE_RATE // fps)
            video = np.zeros((n, 1, 1, 3), np.uint8)  # only the frame count: 1x1 black frames
            lap("decode")
        else:
            frames = media.decode_video(clip.video, fps, opts["decode_side"])
            wav, n = media.align(wav, len(frames), fps)
            lap("decode")
            if n >= min_frames:
                face_options = opts["face"]
                if opts["precropped"]:
                    video = faces.centre_crop_resize(frames[:n], opts["image_size"], face_options.center_crop)
                else:
                    boxes = faces.track(frames[:n], fps, face_options, clip.video)
                    lap("detect")
                    video = faces.crop(frames[:n], boxes, opts["image_size"])
                lap("resize")
        if n < min_frames:
            return Skip(
                clip.path, f"too short: {n} frames at {fps} fps, fewer than one training window of {min_frames}"
            )
        audio = media.to_int16(wav, clip.audio or clip.video)
    except media.MediaError as e:
        return Skip(e.path, e.reason)
    except Exception as e:  # a decoder failing in an unforeseen way on a bad file: recorded, not fatal
        return Skip(clip.path, f"unexpected {type(e).__name__}: {e}")
    return clip.key, {
        "utterance_id": clip.key,
        "speaker": clip.speaker,
        "speaker_index": opts["speakers"][clip.speaker],
        "emotion": clip.emotion,
        "intensity": clip.intensity,
        "audio": audio,
        "video": video,
    }


def _process_job(job):
    process, clip, opts = job
    return process(clip, opts)


def write_part(directory: str, name: str, skips: Sequence[Skip]) -> None:
    os.makedirs(os.path.join(directory, _PARTS), exist_ok=True)
    with open(os.path.join(directory, _PARTS, f"{name}.json"), "w") as f:
        json.dump([dataclasses.asdict(s) for s in skips], f)


class CorpusBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """Base of the real-corpus builders; subclasses set the class attributes and ``_scan``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    EMOTIONS: tuple[str, ...] = ()
    INTENSITIES: tuple[str, ...] = (UNSPECIFIED,)
    LAYOUT = ""  # the expected manual_dir layout, quoted in errors
    LAYOUT_GLOBS: tuple[str, ...] = ()  # at least one must match under manual_dir
    BEAM = False  # prepare with Apache Beam (large corpora)
    PROCESS = staticmethod(process_clip)  # clip, options -> (key, example) | Skip; module-level (workers run it)
    SPLIT_SEED = 0
    MANUAL_DOWNLOAD_INSTRUCTIONS = "See the builder's docstring and the avrep README, 'Training on real corpora'."

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        self._num_workers = num_workers
        super().__init__(**kwargs)

    # ---- what a corpus module provides -------------------------------------------------------------
    @abc.abstractmethod
    def _scan(self, root: str) -> Iterable[Clip | Skip]:
        """Every clip under ``root``, or a Skip for a file outside the corpus's naming scheme."""

    def _split_of(self, clips: Sequence[Clip], speakers: Sequence[str]) -> dict[str, str]:
        """Speaker -> split: speaker-disjoint 75/15/10 over a seeded shuffle of the sorted speakers."""
        order = [speakers[i] for i in np.random.default_rng(self.SPLIT_SEED).permutation(len(speakers))]
        n = len(order)
        counts = {s: int(round(n * f)) for s, f in SPLIT_FRACTIONS.items()}
        if n >= 3:
            counts = {s: max(1, c) for s, c in counts.items()}
        while n - sum(counts.values()) < 1 and any(counts.values()):
            largest = max(counts, key=counts.get)
            counts[largest] -= 1
        split, start = {}, 0
        for name in ("test", "validation"):
            split.update({spk: name for spk in order[start : start + counts[name]]})
            start += counts[name]
        split.update({spk: "train" for spk in order[start:]})
        return split

    def _fold_of(self, clips: Sequence[Clip], speakers: Sequence[str]) -> dict[str, int]:
        """Speaker -> cross-validation fold (speaker-independent, round robin over a seeded shuffle)."""
        order = np.random.default_rng(self.SPLIT_SEED + 1).permutation(len(speakers))
        return {speakers[i]: k % NUM_FOLDS for k, i in enumerate(order)}

    # ---- TFDS ----------------------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=tfds.features.FeaturesDict(schema.av_features(cfg.image_size, self.EMOTIONS, self.INTENSITIES)),
            metadata=tfds.core.MetadataDict(
                sample_rate=media.SAMPLE_RATE,
                fps=cfg.fps,
                image_size=cfg.image_size,
                precropped=cfg.precropped,
                face=dataclasses.asdict(cfg.face),
            ),
            # Local builds keep utterance-id order (Grain shuffles at read time); their records are still
            # sorted in memory by TFDS (schema.shuffle_in_memory: no TensorFlow spill). Beam builds shuffle
            # with Beam itself (and TFDS's Beam writer needs integer keys to keep order).
            disable_shuffling=not self.BEAM,
        )

    @classmethod
    def check_manual_dir(cls, root: str | None) -> str:
        """The absolute manual_dir, or a DataError naming the layout expected there."""
        hint = f"expected the {cls.name} layout:\n{cls.LAYOUT}"
        if not root or not os.path.isdir(root):
            raise DataError(f"{cls.name}: manual_dir {root!r} is not a directory; {hint}")
        root = os.path.abspath(root)
        if not any(glob.glob(os.path.join(glob.escape(root), g)) for g in cls.LAYOUT_GLOBS):
            found = sorted(os.listdir(root))[:8]
            raise DataError(f"{cls.name}: manual_dir {root!r} does not look like {cls.name} (it holds {found}); {hint}")
        return root

    def _scan_clips(self, root: str) -> tuple[list[Clip], list[Skip]]:
        """``_scan``'s clips with unique keys, and the files rejected (duplicates included)."""
        clips, skips, seen = [], [], set()
        for item in self._scan(root):
            if isinstance(item, Skip):
                skips.append(item)
            elif item.key in seen:
                skips.append(Skip(item.path, f"duplicate utterance id {item.key!r}"))
            else:
                seen.add(item.key)
                clips.append(item)
        if not clips:
            raise DataError(
                f"{self.name}: no clip under manual_dir {root!r} follows the corpus naming "
                f"({len(skips)} files rejected); expected the layout:\n{self.LAYOUT}"
            )
        return clips, skips

    def _split_generators(self, dl_manager):
        root = self.check_manual_dir(str(dl_manager.manual_dir))
        clips, skips = self._scan_clips(root)
        write_part(self.data_dir, "scan", skips)
        speakers = sorted({c.speaker for c in clips})
        split, fold = self._split_of(clips, speakers), self._fold_of(clips, speakers)
        self.info.metadata["manual_dir"] = root
        self.info.metadata["speakers"] = {
            s: {"split": split[s], "fold": fold[s], "index": i} for i, s in enumerate(speakers)
        }
        by_split = collections.defaultdict(list)
        for c in clips:
            by_split[split[c.speaker]].append(c)
        return {
            name: self._generate_examples(name, sorted(by_split[name], key=lambda c: c.key))
            for name in ("train", "validation", "test")
            if by_split[name]
        }

    def _options(self) -> dict:
        cfg = self.builder_config
        return dict(
            fps=cfg.fps,
            min_frames=cfg.min_frames,
            image_size=cfg.image_size,
            precropped=cfg.precropped,
            decode_side=cfg.decode_side,
            face=cfg.face,
            speakers={s: v["index"] for s, v in self.info.metadata["speakers"].items()},
        )

    def _generate_examples(self, split: str, clips: list[Clip]):
        if self.BEAM:
            return _beam_process(clips, self._options(), self.data_dir, split, self.PROCESS)
        return self._generate_local(split, clips)

    def _generate_local(self, split: str, clips: list[Clip]):
        opts, skips = self._options(), []
        jobs = [(self.PROCESS, c, opts) for c in clips]
        workers = min(len(jobs), self._num_workers or os.cpu_count() or 1)
        if workers <= 1:
            results = map(_process_job, jobs)
            pool = None
        else:  # spawn: the parent may hold JAX's threads, which fork would copy
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap(_process_job, jobs, chunksize=2)
        try:
            for result in results:
                if isinstance(result, Skip):
                    skips.append(result)
                else:
                    yield result
        finally:
            if pool is not None:
                pool.terminate()
        write_part(self.data_dir, split, skips)

    def download_and_prepare(self, *args, **kwargs):
        """TFDS's build, then the skip lists merged into ``manifest.json`` and a summary printed."""
        with schema.shuffle_in_memory():  # splits over 1 GiB would otherwise need TensorFlow
            super().download_and_prepare(*args, **kwargs)
        summary = merge_manifest(
            self.data_dir,
            self.name,
            self.builder_config.name,
            {s: int(v.num_examples) for s, v in self.info.splits.items()},
        )
        print(summary, flush=True)


def merge_manifest(data_dir: str, name: str, config: str, counts: dict[str, int]) -> str:
    """Writes ``manifest.json`` (built counts, every skipped file with its reason); returns a summary line."""
    path = os.path.join(data_dir, MANIFEST)
    parts_dir = os.path.join(data_dir, _PARTS)
    if os.path.isdir(parts_dir):
        skipped = []
        for part in sorted(os.listdir(parts_dir)):
            with open(os.path.join(parts_dir, part)) as f:
                skipped += [dict(row, stage=part[:-5]) for row in json.load(f)]
        skipped.sort(key=lambda r: r["file"])
        reasons = collections.Counter(r["reason"].split(":")[0].split(" (")[0] for r in skipped)
        manifest = {
            "dataset": f"{name}/{config}",
            "examples": counts,
            "num_skipped": len(skipped),
            "skipped_by_reason": dict(reasons.most_common()),
            "skipped": skipped,
        }
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)
        for part in os.listdir(parts_dir):
            os.remove(os.path.join(parts_dir, part))
        os.rmdir(parts_dir)
    if not os.path.isfile(path):
        return f"[avrep] {name}/{config}: no {MANIFEST} in {data_dir} (built by another tool?)"
    with open(path) as f:
        manifest = json.load(f)
    return (
        f"[avrep] {manifest['dataset']}: {sum(manifest['examples'].values())} examples "
        f"{manifest['examples']}, {manifest['num_skipped']} files skipped "
        f"{manifest['skipped_by_reason']} (details: {path})"
    )


def _beam_process(clips: list[Clip], opts: dict, data_dir: str, split: str, process=process_clip):
    """The Beam graph of one split: process clips in parallel; skipped files go to a manifest part."""
    import apache_beam as beam

    class Process(beam.DoFn):
        def process(self, clip):
            result = process(clip, opts)
            if isinstance(result, Skip):
                yield beam.pvalue.TaggedOutput("skipped", result)
            else:
                yield result

    @beam.ptransform_fn
    def transform(pipeline):
        outputs = (
            pipeline
            | "Clips" >> beam.Create(clips)
            | "Reshuffle" >> beam.Reshuffle()  # spread the clips over workers
            | "Process" >> beam.ParDo(Process()).with_outputs("skipped", main="examples")
        )
        _ = (
            outputs.skipped
            | "CollectSkips" >> beam.combiners.ToList()
            | "WriteSkips" >> beam.Map(lambda skips: write_part(data_dir, split, skips))
        )
        return outputs.examples

    return transform()  # pylint: disable=no-value-for-parameter
