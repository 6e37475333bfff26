"""TFDS builder for SynthAV, avrep's built-in procedural audiovisual emotion corpus.

The builder writes ArrayRecord files (no TensorFlow needed for these tensor features) that
Grain reads through ``tfds.data_source``. Splits are speaker-disjoint (75/15/10, as MEAD).

Configs:
  mdvae        64x64 faces at 30 fps (MDVAE / VQ-MDVAE setting), 40 speakers x 24 utterances
  vqmae        96x96 faces at 25 fps (VQ-MAE setting), 40 speakers x 24 utterances
  mdvae_smoke, vqmae_smoke   tiny variants for tests (seconds to build)
  mdvae_other_smoke          a second tiny MDVAE-setting corpus, 6 other speakers (S007-S012): cross-corpus tests
  vqmae_pretrain   unlabelled-role pre-training corpus of the VQ-MAE setting (as VoxCeleb2 is to RAVDESS):
                   240 speakers x 4 utterances, speakers S041-S280, disjoint from vqmae's S001-S040; its
                   emotion labels exist but pre-training does not read them (PRETRAINING_CORPORA)
  vqmae_pretrain_smoke       the same beside vqmae_smoke (12 speakers S007-S018, disjoint from its S001-S006)
  speech, speech_smoke       the speech view of mdvae / mdvae_smoke (the DVAE family): the same utterances'
                             16 kHz audio, silence-trimmed at 30 dB as the DVAE papers' code does, with
                             speaker / gender / emotion / intensity labels and the same splits; no video
                             (schema.speech_features; read with spec.decode_speech)

Every example is generated from (config seed, speaker, emotion, intensity, take) only, so a
build is deterministic and examples can be generated in parallel processes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import media, schema
from data_pipelines.synthav import generator

# Per-frame ground-truth fields kept with each example: name -> trailing shape.
TRUTH_FIELDS = {
    "f0": (),
    "voiced": (),
    "formants": (3,),
    "loudness": (),
    "mouth_open": (),
    "mouth_width": (),
    "eye_open": (),
    "head_pose": (3,),
    "gaze": (2,),
}


@dataclasses.dataclass
class SynthAVConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    fps: int = 30
    num_speakers: int = 40
    utterances_per_speaker: int = 24
    min_seconds: float = 1.5
    max_seconds: float = 3.0
    seed: int = 0
    first_speaker: int = 0  # speakers S<first_speaker + 1> ... (generator.make_speakers)
    video: bool = True  # False: the speech view (schema.speech_features), no face drawn
    trim_db: float | None = None  # speech view: leading / trailing silence trimmed (media.trim_silence)


def _config(name, setting, **kw):
    s = generator.SETTINGS[setting]
    return SynthAVConfig(
        name=name,
        description=f"{setting} setting: {s['image_size']}px @ {s['fps']} fps",
        image_size=s["image_size"],
        fps=s["fps"],
        **kw,
    )


BUILDER_CONFIGS = [
    _config("mdvae", "mdvae"),
    _config("vqmae", "vqmae", min_seconds=2.2, max_seconds=3.5),
    _config("mdvae_smoke", "mdvae", num_speakers=6, utterances_per_speaker=4, min_seconds=1.2, max_seconds=1.6),
    # A second corpus in the MDVAE setting, 6 other speakers (S007-S012): cross-corpus tests, as RAVDESS is to MEAD.
    _config(
        "mdvae_other_smoke",
        "mdvae",
        first_speaker=6,
        num_speakers=6,
        utterances_per_speaker=4,
        min_seconds=1.2,
        max_seconds=1.6,
    ),
    _config("vqmae_smoke", "vqmae", num_speakers=6, utterances_per_speaker=4, min_seconds=2.2, max_seconds=2.4),
    # Many speakers, few utterances each: speaker variety is what an encoder must generalise over; shorter
    # clips keep the CPU cost (generation, index cache) near that of the labelled set.
    _config(
        "vqmae_pretrain",
        "vqmae",
        first_speaker=40,
        num_speakers=240,
        utterances_per_speaker=4,
        min_seconds=1.6,
        max_seconds=2.4,
    ),
    _config(
        "vqmae_pretrain_smoke",
        "vqmae",
        first_speaker=6,
        num_speakers=12,
        utterances_per_speaker=4,
        min_seconds=2.2,
        max_seconds=2.4,
    ),
]
# Pre-training corpus -> the labelled corpus whose speakers it must not contain (tests/test_synthav_generator.py).
PRETRAINING_CORPORA = {"vqmae_pretrain": "vqmae", "vqmae_pretrain_smoke": "vqmae_smoke"}
# The speech views: a config of the same generator arguments gives the same utterances (keys and audio).
_SPEECH_OF = {"speech": "mdvae", "speech_smoke": "mdvae_smoke"}
BUILDER_CONFIGS += [
    dataclasses.replace(
        next(c for c in BUILDER_CONFIGS if c.name == av),
        name=name,
        description=f"speech view of {av}: its utterances' 16 kHz audio, trimmed at 30 dB; no video",
        video=False,
        trim_db=30.0,
    )
    for name, av in _SPEECH_OF.items()
]


def _example(job):
    """Generates one example; module-level so worker processes can run it."""
    key, speaker, split_speaker_index, emotion, intensity, seed, cfg = job
    utt = generator.synthesize_utterance(
        speaker,
        emotion,
        intensity,
        seed=seed,
        image_size=cfg["image_size"],
        fps=cfg["fps"],
        min_seconds=cfg["min_seconds"],
        max_seconds=cfg["max_seconds"],
        video=cfg["video"],
    )
    labels = {
        "utterance_id": key,
        "speaker": speaker.speaker_id,
        "speaker_index": split_speaker_index,
        "gender": speaker.gender,
        "emotion": emotion,
        "intensity": intensity,
    }
    if not cfg["video"]:  # the speech view: the same int16 samples, trimmed (not re-scaled)
        audio, start = media.trim_silence(utt["audio"], cfg["trim_db"])
        return key, {**labels, "audio": audio, "trim_start": start}
    example = {
        **labels,
        "audio": utt["audio"],
        "video": utt["video"],
        "phones": utt["phones"].astype(np.int32),
        "truth": {k: utt[k].astype(np.float32) for k in TRUTH_FIELDS},
    }
    return key, example


class Synthav(tfds.core.GeneratorBasedBuilder):
    """SynthAV: procedural emotional audiovisual speech with known ground-truth factors."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS

    def _info(self):
        cfg = self.builder_config
        size = cfg.image_size
        labels = {
            "gender": tfds.features.ClassLabel(names=["female", "male"]),
            "emotion": tfds.features.ClassLabel(names=list(generator.EMOTIONS)),
            "intensity": tfds.features.ClassLabel(names=["level_1", "level_2", "level_3"]),
        }
        if not cfg.video:
            return self.dataset_info_from_configs(
                description=__doc__,
                features=tfds.features.FeaturesDict({**schema.speech_features(), **labels}),
                metadata=tfds.core.MetadataDict(
                    sample_rate=generator.SAMPLE_RATE, trim_db=cfg.trim_db, speech_view_of=_SPEECH_OF[cfg.name]
                ),
            )
        truth = {k: tfds.features.Tensor(shape=(None, *shape), dtype=np.float32) for k, shape in TRUTH_FIELDS.items()}
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    **schema.av_features(size, generator.EMOTIONS, ["level_1", "level_2", "level_3"]),
                    "gender": tfds.features.ClassLabel(names=["female", "male"]),
                    "phones": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "truth": tfds.features.FeaturesDict(truth),
                }
            ),
            metadata=tfds.core.MetadataDict(
                sample_rate=generator.SAMPLE_RATE, fps=self.builder_config.fps, image_size=size
            ),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        speakers = speakers_of(cfg)
        splits = generator.split_speakers(speakers, seed=cfg.seed)
        return {name: self._generate_examples(split_speakers) for name, split_speakers in splits.items()}

    def _generate_examples(self, speakers):
        cfg = self.builder_config
        job_cfg = dict(
            image_size=cfg.image_size,
            fps=cfg.fps,
            min_seconds=cfg.min_seconds,
            max_seconds=cfg.max_seconds,
            video=cfg.video,
            trim_db=cfg.trim_db,
        )
        jobs = []
        for index, speaker in enumerate(speakers):
            for take, (emotion, intensity) in enumerate(generator.utterance_plan(speaker, cfg.utterances_per_speaker)):
                key = f"{speaker.speaker_id}_{generator.EMOTIONS[emotion]}_{intensity + 1}_{take:03d}"
                seed = hash_seed(cfg.seed, speaker.speaker_id, take)
                jobs.append((key, speaker, index, emotion, intensity, seed, job_cfg))
        # Without faces an utterance takes ~20 ms: worker start-up would cost more than it saves.
        workers = min(len(jobs), os.cpu_count() or 1) if cfg.video else 1
        if workers <= 1:
            yield from map(_example, jobs)
            return
        # Spawned workers: the parent may already hold JAX's threads, which fork would copy.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap(_example, jobs, chunksize=4)


def speakers_of(cfg: SynthAVConfig) -> list:
    """The speakers of a builder config (cheap: no utterance is generated)."""
    return generator.make_speakers(cfg.num_speakers, seed=cfg.seed, first_speaker=cfg.first_speaker)


def hash_seed(*parts) -> int:
    """A stable 32-bit seed from strings/ints (Python's hash() is salted per process)."""
    return int(
        np.random.SeedSequence([int.from_bytes(str(p).encode(), "little") % (2**63) for p in parts]).generate_state(1)[
            0
        ]
    )


def build(config_name: str, data_dir: str) -> None:
    """Generates SynthAV/<config_name> into data_dir unless it is already there."""
    builder = Synthav(config=config_name, data_dir=data_dir, file_format="array_record")
    with schema.shuffle_in_memory():
        builder.download_and_prepare()
