"""Feature and index caches: the frozen tokenizers' outputs for every utterance of a split, computed once and
memory-mapped. On the 2-core CPU the cache makes stage 2 about 3x faster than encoding inside every step (the
encoders are 70 % of an on-device step; see docs/RESULTS.md).

A cached record is {feature_field(m): frames} (``data_pipelines.spec.feature_field``: the one place the field
names are made) with the utterance's id, speaker and labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from avrep.features.inputs import iter_utterance_features, utterance_frames
from avrep.features.tokenizers import FrozenTokenizers
from data_pipelines.spec import DataError, feature_field

INDEX_FILE = "index.json"
CACHE_FORMAT = 4  # bump when the files or the index change
LABEL_FIELDS = ("emotion", "intensity")  # kept in the cache index (with the speaker), for evaluations


def record_meta(record: Mapping, index: int) -> dict:
    """A record's utterance id (its index if it has none), speaker and the labels it carries (LABEL_FIELDS)."""

    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    meta = {"utterance_id": text(record.get("utterance_id", index))}
    if "speaker" in record:
        meta["speaker"] = text(record["speaker"])
    return {**meta, **{k: int(record[k]) for k in LABEL_FIELDS if k in record}}


class FeatureSource:
    """Random access to a feature cache (``build_feature_cache``): item i is {feature_field("audio"): [r * n, ...],
    feature_field("visual"): [n, ...]} memory-mapped, with the utterance's id, speaker and labels (``record_meta``).
    An audio-only cache holds {feature_field("audio"): [n, ...]} alone (its frames are the audio frames)."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, INDEX_FILE)) as f:
            self.index = json.load(f)
        self.description = f"feature cache {directory} of {self.index['fingerprint']['source']}"
        total = int(self.index["total_frames"])
        self.rates = {m: int(r) for m, r in self.index["rates"].items()}
        self._arrays = {
            m: np.memmap(
                os.path.join(directory, f"{m}.bin"),
                np.dtype(self.index["dtypes"][m]),
                "r",
                shape=(total * self.rates[m], *self.index["frame_shapes"][m]),
            )
            for m in self.rates
        }

    def __len__(self) -> int:
        return len(self.index["utterances"])

    def __getitem__(self, i: int) -> dict:
        u = self.index["utterances"][i]
        s, n = int(u["offset"]), int(u["num_frames"])
        meta = {k: v for k, v in u.items() if k not in ("offset", "num_frames")}  # record, id, speaker, labels
        return {
            **meta,
            **{
                feature_field(m): np.asarray(a[s * self.rates[m] : (s + n) * self.rates[m]])
                for m, a in self._arrays.items()
            },
        }


def _fingerprint(tokenizers: FrozenTokenizers, source, min_frames: int, outputs: str, audio_rate: int) -> dict:
    return {
        "format": CACHE_FORMAT,
        "tokenizers": tokenizers.fingerprint(),
        "source": source.description,
        "records": len(source),
        # The data's content, where the source can tell it (a TFDS split: its files' sizes and times).
        "manifest": source.manifest() if hasattr(source, "manifest") else None,
        "audio": {k: str(v) for k, v in dict(tokenizers.audio_cfg).items()},
        "min_frames": min_frames,
        "outputs": outputs,
        "audio_rate": audio_rate,
    }


def _read_index(directory: str) -> tuple[dict, str | None]:
    """A cache's index, and what is wrong with the cache if it was left half-written (a build is written to a
    temporary directory and renamed when complete, but a copy, a full disk or a kill while an old cache was being
    replaced can still leave one): an unreadable index, or a data file shorter or longer than the index says."""
    try:
        with open(os.path.join(directory, INDEX_FILE)) as f:
            index = json.load(f)
        for m, rate in index["rates"].items():
            path = os.path.join(directory, f"{m}.bin")
            expected = int(index["total_frames"]) * int(rate) * np.dtype(index["dtypes"][m]).itemsize
            expected *= int(np.prod(index["frame_shapes"][m]))
            size = os.path.getsize(path) if os.path.exists(path) else 0
            if size != expected:
                return index, f"{m}.bin has {size} of {expected} bytes"
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        return {}, f"{INDEX_FILE} unreadable: {type(e).__name__}: {e}"
    return index, None


def build_feature_cache(
    directory: str,
    tokenizers: FrozenTokenizers,
    source,
    *,
    min_frames: int,
    outputs: str = "features",
    audio_rate: int = 1,
    log=print,
) -> FeatureSource:
    """The tokenizers' ``outputs`` ("features" for stage 2, "indices" for VQ-MAE) for every record of
    ``source``, written to ``directory`` (reused when its fingerprint matches: the same tokenizers by content,
    i.e. weights and config, the same data files, framing and outputs). Utterances with fewer than
    ``min_frames`` video frames are skipped, listed in the index (``skipped``) and counted in a printed message.

    Tokenizers of the audio modality alone (an audio-only model) give an audio-only cache whose frames are the
    audio's STFT frames (``audio_rate`` must be 1; ``min_frames`` counts audio frames); the video, possibly 1x1
    placeholders, is never decoded into the cache."""
    audio_only = tokenizers.modalities == ("audio",)
    if audio_only and audio_rate != 1:
        raise ValueError(f"build_feature_cache: an audio-only cache has audio_rate 1 (its clock), got {audio_rate}")
    fingerprint = _fingerprint(tokenizers, source, min_frames, outputs, audio_rate)
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        index, damage = _read_index(directory)
        if damage is not None:
            log(f"[avrep] feature cache {directory} is incomplete ({damage}): rebuilding")
        elif index.get("fingerprint") == fingerprint:
            log(f"[avrep] feature cache {directory}: reused ({len(index['utterances'])} utterances)")
            return FeatureSource(directory)
        else:
            changed = sorted(k for k in fingerprint if index.get("fingerprint", {}).get(k) != fingerprint[k])
            log(f"[avrep] feature cache {directory} is stale (changed: {', '.join(changed)}): rebuilding")
    tmp = f"{directory}.tmp-{hashlib.sha1(directory.encode()).hexdigest()[:8]}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    utterances, skipped, layout = [], [], {}

    def frames():
        for i in range(len(source)):
            record = source[i]
            utt = utterance_frames(
                record, tokenizers.audio_cfg, f"{source.description}: record {i}", audio_rate, audio_only=audio_only
            )
            meta = {"record": i, **record_meta(record, i), "num_frames": utt["num_frames"]}
            if utt["num_frames"] < min_frames:
                skipped.append(meta)
                continue
            utterances.append(meta)
            yield utt

    offset = 0
    encoders = {m: jax.jit(f) for m, f in tokenizers.frame_encoders(outputs).items()}
    files = {m: open(os.path.join(tmp, f"{m}.bin"), "wb") for m in tokenizers.modalities}
    try:
        features = iter_utterance_features(encoders, frames(), per_utterance=tokenizers.batch_statistics)
        for k, out in enumerate(features):
            if not all(np.all(np.isfinite(x)) for x in out.values()):
                raise DataError(
                    f"{source.description}: record {utterances[k]['record']} gives non-finite "
                    f"tokenizer outputs (check the tokenizer checkpoints {tokenizers.paths})"
                )
            for m, x in out.items():
                layout[m] = (str(x.dtype), list(x.shape[1:]))
                files[m].write(np.ascontiguousarray(x).tobytes())
            utterances[k]["offset"] = offset
            offset += utterances[k]["num_frames"]
    finally:
        for f in files.values():
            f.close()
    if not utterances:
        raise DataError(f"{source.description}: no utterance has at least {min_frames} frames")
    with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump(
            {
                "fingerprint": fingerprint,
                "dtypes": {m: d for m, (d, _) in layout.items()},
                "frame_shapes": {m: s for m, (_, s) in layout.items()},
                "rates": {m: r for m, r in (("audio", audio_rate), ("visual", 1)) if m in tokenizers.modalities},
                "total_frames": offset,
                "utterances": utterances,
                "skipped": skipped,
            },
            f,
        )
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    if skipped:
        log(
            f"[avrep] feature cache: skipped {len(skipped)} utterance(s) shorter than {min_frames} frames "
            f"(listed in {index_path})"
        )
    log(f"[avrep] feature cache {directory}: built ({len(utterances)} utterances, {offset} frames)")
    return FeatureSource(directory)


def feature_cache_dir(config, workdir: str, split: str) -> str:
    """Where a split's tokenizer outputs are cached: <data.feature_cache_dir>/<split> if that key is set
    (a cache shared between runs on the same tokenizers), else <workdir>/feature_cache/<split>."""
    root = str(config["data"].get("feature_cache_dir", "")) or os.path.join(workdir, "feature_cache")
    return os.path.join(root, split)


def shared_feature_cache(directory: str, tokenizers: FrozenTokenizers, source, **kwargs) -> FeatureSource:
    """``build_feature_cache`` by process 0 while the others wait (the directory must be on a filesystem
    every process sees), then opened by every process."""
    if jax.process_index() == 0:
        build_feature_cache(directory, tokenizers, source, **kwargs)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"avrep:feature_cache:{directory}")
    return FeatureSource(directory)


class SourceView:
    """Records ``indices`` of several random-access sources seen as one (e.g. one fold's speakers taken
    from the caches of every split)."""

    def __init__(self, sources, pairs: list[tuple[int, int]], description: str):
        self._sources, self._pairs, self.description = list(sources), list(pairs), description

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i: int) -> dict:
        s, k = self._pairs[i]
        return self._sources[s][k]
