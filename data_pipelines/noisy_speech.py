"""Noisy speech for unsupervised speech enhancement: clean utterances of a speech dataset mixed with noise.

  registry.prepare("noisy_speech/wsj0_qut_like", data_dir)   # SynthAV speech (built first if absent) + noise

Each record is one clean utterance of the speech dataset's split (default ``synthav/speech``; any speech
dataset avrep reads, e.g. ``speech_folder/wsj0``) peak-normalised, mixed with one noise segment at one SNR:

  utterance_id, speaker, speaker_index   of the clean utterance
  clean, noise, noisy                    int16 at one common scale per record, noisy = clean + noise exactly
  snr_db                                 10·log10(Σ clean² / Σ noise²) of the stored samples
  noise_kind, noise_source               e.g. "pink" / "generated:pink", or a folder's kind / "<file>@<sample>"
  video                                  (configs with ``video_dataset``) the speaker's face frames over the
                                         clean utterance, from the audiovisual dataset of the same utterance ids

Conditions are balanced and deterministic from the config seed: the split's utterances, in a seeded order
(also the stored order), take the (SNR, noise kind) pairs of the full crossing in blocks of S x K, the SNR
cycling fastest (so any first n records are balanced over SNRs), the kinds in a seeded order; the noise
segment is a function of (seed, noise set, kind, utterance id) only. The test split draws from the
*test* noise set, train and validation (for noise-model training, U-ND) from the *train* set: generated noises
use disjoint random draws and disjoint babble talkers, a noise folder disjoint time spans of every recording
(``data_pipelines.noise``).

Configs, shaped like [Lin-thesis]'s test sets (Ch. 6; keys: docs/REFERENCES.md):
  wsj0_qut_like     test SNR -5, 0, 5 dB (train the same), as WSJ0-QUT
  vb_dmd_like       test SNR 2.5, 7.5, 12.5, 17.5 dB; train 0, 5, 10, 15 dB, as VB-DMD
  *_av              the test split of the same mixtures with the face video (synthav/mdvae; the AV-CVAE)
  *_smoke           a few utterances of synthav/speech_smoke (tests)
Options (``build(..., options={...})`` or ``python -m data_pipelines.noisy_speech --option k=v``) make a custom
config: e.g. ``speech=speech_folder/wsj0`` for WSJ0 users, ``noise_source=folder`` with a QUT-NOISE or DEMAND
folder as manual_dir. Utterances and noise files that cannot be used are listed with the reason in
``manifest.json`` beside the dataset (silent or too short speech, unreadable noise files).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import media, noise, schema
from data_pipelines.corpora.base import Skip, merge_manifest, write_part
from data_pipelines.sources import open_source
from data_pipelines.spec import DataError

SPLITS = ("train", "validation", "test")
_SCALE = 0.99 * 32767.0  # the largest stored magnitude of a record's clean, noise and noisy


@dataclasses.dataclass
class NoisySpeechConfig(tfds.core.BuilderConfig):
    speech: str = "synthav/speech"  # the clean speech dataset (same data_dir unless speech_data_dir)
    speech_data_dir: str = ""
    video_dataset: str = ""  # an audiovisual dataset of the same utterance ids (e.g. synthav/mdvae): face video
    snrs_db: tuple = (-5.0, 0.0, 5.0)  # test split
    train_snrs_db: tuple = (-5.0, 0.0, 5.0)  # train and validation splits
    noise_source: str = "generated"  # or "folder": recordings under manual_dir (QUT-NOISE, DEMAND, ...)
    noise_kinds: tuple = noise.NOISE_KINDS  # generated kinds; a folder's kinds are its sub-directories
    train_fraction: float = 0.75  # noise folder: the first part of every recording is the train noise set
    splits: tuple = SPLITS
    max_per_split: int = 0  # 0: every utterance of the split
    min_seconds: float = 0.5  # shorter clean utterances are skipped
    seed: int = 0

    def __post_init__(self):
        for key in ("snrs_db", "train_snrs_db"):
            values = tuple(float(v) for v in getattr(self, key))
            if not values:
                raise DataError(f"noisy_speech config {self.name!r}: {key} is empty")
            for v in values:
                noise.check_snr(v, f"noisy_speech config {self.name!r}: {key}")
            setattr(self, key, values)
        if self.noise_source not in ("generated", "folder"):
            raise DataError(f"noisy_speech: noise_source must be 'generated' or 'folder', got {self.noise_source!r}")
        unknown = set(self.splits) - set(SPLITS)
        if unknown or not self.splits:
            raise DataError(f"noisy_speech: splits {self.splits!r}; expected some of {SPLITS}")


def _configs() -> list[NoisySpeechConfig]:
    shapes = {
        "wsj0_qut_like": dict(snrs_db=(-5.0, 0.0, 5.0), train_snrs_db=(-5.0, 0.0, 5.0)),
        "vb_dmd_like": dict(snrs_db=(2.5, 7.5, 12.5, 17.5), train_snrs_db=(0.0, 5.0, 10.0, 15.0)),
    }
    out = []
    for name, snrs in shapes.items():
        about = f"test SNR {snrs['snrs_db']} dB, train {snrs['train_snrs_db']} dB"
        out += [
            NoisySpeechConfig(name=name, description=f"SynthAV speech + generated noise, {about}", **snrs),
            NoisySpeechConfig(
                name=f"{name}_av",
                description=f"test split of {name} with the face video (synthav/mdvae)",
                video_dataset="synthav/mdvae",
                splits=("test",),
                **snrs,
            ),
            NoisySpeechConfig(
                name=f"{name}_smoke",
                description=f"tests: 6 utterances per split of synthav/speech_smoke, {about}",
                speech="synthav/speech_smoke",
                max_per_split=6,
                **snrs,
            ),
            NoisySpeechConfig(
                name=f"{name}_av_smoke",
                description=f"tests: {name}_smoke's test split with the face video (synthav/mdvae_smoke)",
                speech="synthav/speech_smoke",
                video_dataset="synthav/mdvae_smoke",
                splits=("test",),
                max_per_split=6,
                **snrs,
            ),
        ]
    return out


def noise_set_of(split: str) -> str:
    return "test" if split == "test" else "train"


def quantize_mixture(clean: np.ndarray, noise_segment: np.ndarray) -> dict[str, np.ndarray]:
    """int16 clean, noise and noisy (= clean + noise exactly) at one scale that keeps all three in range."""
    scale = _SCALE / max(np.max(np.abs(clean)), np.max(np.abs(noise_segment)), np.max(np.abs(clean + noise_segment)))
    c = np.round(clean * scale).astype(np.int32)
    n = np.round(noise_segment * scale).astype(np.int32)
    n = np.clip(c + n, -32768, 32767) - c  # rounding can add one step beyond full scale: taken from the noise
    return {"clean": c.astype(np.int16), "noise": n.astype(np.int16), "noisy": (c + n).astype(np.int16)}


def decode_mixture(record, where: str) -> dict:
    """Float32 ``clean``, ``noise`` and ``noisy`` (int16 / 32768: one scale, so noisy = clean + noise) and the
    record's labels; a DataError naming ``where`` for a record without the noisy-speech fields."""
    missing = {"clean", "noise", "noisy", "snr_db"} - set(record)
    if missing:
        raise DataError(f"{where}: not a noisy-speech record (no {sorted(missing)}; build it with noisy_speech)")
    out = {k: np.asarray(record[k]).astype(np.float32) / 32768.0 for k in ("clean", "noise", "noisy")}
    if out["clean"].ndim != 1 or out["clean"].size == 0 or out["noisy"].shape != out["clean"].shape:
        raise DataError(f"{where}: clean / noisy must be equal-length 1-D waveforms, got {out['clean'].shape}")
    out["snr_db"] = float(record["snr_db"])
    for k in ("utterance_id", "speaker", "noise_kind", "noise_source"):
        out[k] = _text(record.get(k, ""))
    if "video" in record:
        out["video"] = np.asarray(record["video"])
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def mix_record(record, where: str, snr: float, kind: str, noise_source, min_seconds: float = 0.5):
    """(utterance_id, example) of one speech record mixed with ``noise_source.segment(kind, ...)`` at ``snr`` dB,
    or a Skip (silent or shorter than ``min_seconds``) naming the record."""
    uid = _text(record.get("utterance_id", ""))
    where = f"{where}: {uid}"
    wav = np.asarray(record.get("audio", ()))
    peak = float(np.max(np.abs(wav))) if wav.ndim == 1 and wav.size else 0.0
    if peak <= (1.0 if wav.dtype.kind == "i" else 1.0 / 32768):  # at most one int16 step: -90 dB
        return Skip(where, f"silent speech: peak {peak:g}, shape {wav.shape}")
    if wav.size < min_seconds * media.SAMPLE_RATE:
        return Skip(where, f"too short: {wav.size / media.SAMPLE_RATE:.2f} s < {min_seconds} s")
    clean = wav.astype(np.float64) / peak
    segment, origin = noise_source.segment(kind, clean.size, uid)
    _, scaled = noise.mix_at_snr(clean, segment, snr)
    example = quantize_mixture(clean, scaled)
    example.update(
        utterance_id=uid,
        speaker=_text(record.get("speaker", "")),
        speaker_index=int(record.get("speaker_index", -1)),
        snr_db=noise.snr_db(example["clean"], example["noise"]),
        noise_kind=kind,
        noise_source=origin,
    )
    return uid, example


class NoisySpeech(tfds.core.GeneratorBasedBuilder):
    __doc__ = __doc__
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "noise_source=folder: manual_dir is your folder of noise recordings (QUT-NOISE, DEMAND)"
    )

    def __init__(self, *, data_dir: str, **kwargs):
        self._root_dir = data_dir  # where the speech (and video) datasets are, unless the config says
        super().__init__(data_dir=data_dir, **kwargs)

    def _video_size(self) -> int | None:
        cfg = self.builder_config
        if not cfg.video_dataset:
            return None
        info = tfds.builder(cfg.video_dataset, data_dir=self._speech_dir()).info
        return int(info.features["video"].shape[1])

    def _speech_dir(self) -> str:
        return self.builder_config.speech_data_dir or self._root_dir

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        waveform = tfds.features.Tensor(shape=(None,), dtype=np.int16)
        features = {
            "utterance_id": tfds.features.Text(),
            "speaker": tfds.features.Text(),
            "speaker_index": np.int32,
            "clean": waveform,
            "noise": waveform,
            "noisy": waveform,
            "snr_db": np.float32,
            "noise_kind": tfds.features.Text(),
            "noise_source": tfds.features.Text(),
        }
        metadata = dict(
            sample_rate=media.SAMPLE_RATE,
            speech=cfg.speech,
            snrs_db=list(cfg.snrs_db),
            train_snrs_db=list(cfg.train_snrs_db),
            noise_source=cfg.noise_source,
            seed=cfg.seed,
        )
        size = self._video_size()
        if size is not None:
            features["video"] = tfds.features.Tensor(shape=(None, size, size, 3), dtype=np.uint8)
            metadata["video_dataset"] = cfg.video_dataset
        return self.dataset_info_from_configs(
            description=self.__doc__,
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(metadata),
            disable_shuffling=True,
        )

    def _noise_sources(self, dl_manager) -> dict:
        cfg = self.builder_config
        if cfg.noise_source == "generated":
            return {s: noise.GeneratedNoise(s, cfg.seed, cfg.noise_kinds) for s in noise.NOISE_SETS}
        recordings, skips = noise.read_noise_folder(str(dl_manager.manual_dir))
        write_part(self.data_dir, "noise_folder", skips)
        self.info.metadata["noise_files"] = len(recordings)
        return {s: noise.FolderNoise(recordings, s, cfg.seed, cfg.train_fraction) for s in noise.NOISE_SETS}

    def _split_generators(self, dl_manager):
        sources = self._noise_sources(dl_manager)
        self.info.metadata["noise_kinds"] = list(sources["test"].kinds)
        return {
            split: self._generate_examples(split, sources[noise_set_of(split)]) for split in self.builder_config.splits
        }

    def _videos(self, split: str) -> dict[str, tuple[np.ndarray, int]]:
        """utterance_id -> (video, fps) of the audiovisual dataset's split."""
        cfg = self.builder_config
        source = open_source(cfg.video_dataset, split, self._speech_dir())
        fps = int(tfds.builder(cfg.video_dataset, data_dir=self._speech_dir()).info.metadata["fps"])
        out = {}
        for i in range(len(source)):
            record = source[i]
            out[_text(record["utterance_id"])] = (np.asarray(record["video"]), fps)
        return out

    def _generate_examples(self, split: str, noise_source):
        cfg = self.builder_config
        speech = open_source(cfg.speech, split, self._speech_dir())
        videos = self._videos(split) if cfg.video_dataset else None
        rng = np.random.default_rng(noise.seed_of(cfg.seed, "order", split))
        order = rng.permutation(len(speech))
        snrs = cfg.snrs_db if split == "test" else cfg.train_snrs_db
        skips, j, conditions = [], 0, []
        for index in order:
            if cfg.max_per_split and j == cfg.max_per_split:
                break
            record = speech[int(index)]
            if not conditions:  # a block of every (SNR, kind) pair; the SNR cycles fastest, kinds in seeded orders
                kinds = [rng.permutation(len(noise_source.kinds)) for _ in snrs]
                conditions = [
                    (snrs[p % len(snrs)], noise_source.kinds[kinds[p % len(snrs)][p // len(snrs)]])
                    for p in range(len(snrs) * len(noise_source.kinds))
                ][::-1]  # popped from the end
            result = mix_record(record, speech.description, *conditions[-1], noise_source, cfg.min_seconds)
            if isinstance(result, Skip):
                skips.append(result)
                continue
            uid, example = result
            if videos is not None:
                if uid not in videos:
                    skips.append(Skip(f"{speech.description}: {uid}", f"no video in {cfg.video_dataset}[{split}]"))
                    continue
                video, fps = videos[uid]
                first = int(record.get("trim_start", 0)) * fps // media.SAMPLE_RATE
                count = -(-example["clean"].size * fps // media.SAMPLE_RATE)
                example["video"] = video[first : first + count]
            conditions.pop()
            j += 1
            yield f"{j:06d}_{uid}", example  # stored in this order: any first n records are balanced
        write_part(self.data_dir, split, skips)


def sources_of(config: str, data_dir: str) -> list[tuple[str, str]]:
    """(dataset, data_dir) pairs that ``noisy_speech/<config>`` reads: prepare them first."""
    cfg = next((c for c in NoisySpeech.BUILDER_CONFIGS if c.name == config), None)
    if cfg is None:
        return []
    where = cfg.speech_data_dir or data_dir
    return [(cfg.speech, where)] + ([(cfg.video_dataset, where)] if cfg.video_dataset else [])


def build(config: str, data_dir: str, manual_dir: str | None = None, options: dict | None = None) -> str:
    """Prepares ``noisy_speech/<config>`` in ``data_dir`` (its speech dataset must be prepared: see
    ``registry.prepare``); ``options`` make a custom config named ``config``. Returns the dataset directory."""
    from data_pipelines.build import custom_config

    names = [c.name for c in NoisySpeech.BUILDER_CONFIGS]
    if options:
        config = custom_config(NoisySpeech, config, options)
    elif config not in names:
        raise ValueError(f"noisy_speech: unknown config {config!r}; expected one of {names} (or give options)")
    cfg = (
        config
        if isinstance(config, NoisySpeechConfig)
        else next(c for c in NoisySpeech.BUILDER_CONFIGS if c.name == config)
    )
    if cfg.noise_source == "folder" and not manual_dir:
        raise DataError(f"noisy_speech/{cfg.name}: noise_source 'folder' needs manual_dir, the folder of noise files")
    builder = NoisySpeech(config=config, data_dir=os.path.expanduser(data_dir), file_format="array_record")
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    with schema.shuffle_in_memory():
        builder.download_and_prepare(download_config=download_config)
    counts = {s: int(v.num_examples) for s, v in builder.info.splits.items()}
    print(merge_manifest(builder.data_dir, "noisy_speech", builder.builder_config.name, counts), flush=True)
    return builder.data_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="wsj0_qut_like")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets")
    parser.add_argument("--manual_dir", default=None, help="noise_source=folder: the folder of noise recordings")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    options = dict(o.split("=", 1) for o in args.option)
    build(args.config, args.data_dir, args.manual_dir, options)


if __name__ == "__main__":
    main()
