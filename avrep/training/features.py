"""Frozen-tokenizer features: what VQ-MDVAE (and the VQ-DSAE / VQ-JointMVAE baselines) see.

Stage 2 models consume the frozen VQ-VAEs' pre-quantisation encoder outputs, flattened per
frame in the authors' (PyTorch, channel-major) order:
audio [513] power -> z_e [64, 8] -> [8 * 64 = 512]; video [64, 64, 3] -> z_e [8, 8, 32] -> [2048].
Decoding goes back the same way: unflatten, quantise with the frozen codebook, run the frozen
decoder.

The tokenizers are frame-wise, so features can be computed once per utterance and cached
(``FeatureCache``) or on device inside every training step. On the 2-core CPU the cache is
about 3x faster (the encoders are 70 % of an on-device step); see the README.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from avrep import audio as audio_lib
from data_pipelines.pipelines import DataError, audio_frame_windows, decode_utterance

MODALITIES = ("audio", "visual")
INDEX_FILE = "index.json"
CACHE_FORMAT = 3  # bump when the files or the index change
CACHE_OUTPUTS = ("features", "indices")
LABEL_FIELDS = ("emotion", "intensity")  # kept in the cache index (with the speaker), for evaluations


def channel_major(z_e: jax.Array) -> jax.Array:
    """[N, *positions, C] channels-last latents -> [N, C * prod(positions)] in PyTorch's order."""
    return jnp.moveaxis(z_e, -1, 1).reshape(z_e.shape[0], -1)


def from_channel_major(x: jax.Array, latent_shape: tuple[int, ...]) -> jax.Array:
    """Inverse of ``channel_major``: [N, C * prod(positions)] -> [N, *latent_shape] (channels last)."""
    *positions, channels = latent_shape
    return jnp.moveaxis(x.reshape(x.shape[0], channels, *positions), 1, -1)


def audio_frames_to_power(windows: jax.Array, audio_cfg) -> jax.Array:
    """[..., n_fft] waveform windows -> [prod(...), bins] linear power spectrum frames."""
    power = audio_lib.power_spectrogram(windows, n_fft=int(audio_cfg["n_fft"]), hop=int(audio_cfg["hop"]),
                                        window=str(audio_cfg["window"]), center=False)
    return power.reshape(-1, power.shape[-1])


def video_to_model_range(video: jax.Array) -> jax.Array:
    """uint8 [..., H, W, 3] -> float32 [N, H, W, 3] in [-0.5, 0.5] (the papers' Normalize(0.5, 1))."""
    x = video.astype(jnp.float32) / 255.0 - 0.5
    return x.reshape(-1, *x.shape[-3:])


class FrozenTokenizers:
    """The trained audio and visual VQ-VAEs named by ``config.tokenizers`` (run directories)."""

    def __init__(self, config: Mapping):
        from avrep.training.checkpointing import load_checkpoint  # tasks are imported by checkpointing

        self.audio_cfg = config["audio"]
        self.models, self.paths = {}, {}
        for modality in MODALITIES:
            path = str(config["tokenizers"][modality])
            if not path:
                raise ValueError(f"config key tokenizers.{modality} is empty: expected the run directory of a "
                                 f"trained {modality} VQ-VAE (e.g. W/vqvae_{modality})")
            model = load_checkpoint(path)
            if model.config.get("task") != "vqvae" or model.config.model.modality != modality:
                raise ValueError(f"config key tokenizers.{modality}={path} is a "
                                 f"{model.config.get('task')}/{model.config.model.get('modality')} run; "
                                 f"expected a {modality} VQ-VAE")
            # Resolved: a run reached through a symlinked directory is the same tokenizer (same cache key).
            self.models[modality], self.paths[modality] = model, os.path.realpath(path)
        size = int(config["data"]["image_size"])
        bins = int(self.audio_cfg["n_fft"]) // 2 + 1
        self.latent_shapes = {
            "audio": self._encode_shape("audio", (1, bins)),
            "visual": self._encode_shape("visual", (1, size, size, 3)),
        }
        self.dims = {m: int(np.prod(s)) for m, s in self.latent_shapes.items()}
        self.num_codes = {m: int(self.models[m].config.model.num_codes) for m in MODALITIES}

    def _encode_shape(self, modality: str, input_shape) -> tuple[int, ...]:
        model = self.models[modality]
        out = jax.eval_shape(lambda x: model.module.apply(model.variables, x, method="encode"),
                             jax.ShapeDtypeStruct(input_shape, jnp.float32))
        return tuple(out.shape[1:])

    def fingerprint(self) -> dict:
        return {m: {"path": self.paths[m], "step": self.models[m].step} for m in MODALITIES}

    def encode(self, power: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """power [N, 513], images [N, H, W, 3] in [-0.5, 0.5] -> features [N, 512], [N, 2048] (no gradient)."""
        return self._features("audio", power), self._features("visual", images)

    def _indices(self, modality: str, x: jax.Array) -> jax.Array:
        """Model inputs [N, ...] -> VQ indices [N, *grid] (int16: the codebooks hold at most 32767 codes)."""
        model = self.models[modality]
        z_e = model.module.apply(model.variables, x, method="encode")
        _, indices = model.module.apply(model.variables, z_e, method="quantize")
        return indices.astype(jnp.int16)

    def frame_encoders(self, outputs: str = "features") -> dict[str, Callable]:
        """Per-modality frame-wise encoders (to jit): audio windows [N, n_fft] / uint8 frames [N, H, W, 3] ->
        flattened features [N, ·] (``outputs="features"``, stage-2 inputs) or index grids (``"indices"``:
        audio [N, 64], visual [N, 24, 24] in the VQ-MAE setting)."""
        if outputs not in CACHE_OUTPUTS:
            raise ValueError(f"frame_encoders: outputs must be one of {CACHE_OUTPUTS}, got {outputs!r}")
        power = lambda w: audio_frames_to_power(w, self.audio_cfg)  # noqa: E731
        if outputs == "indices":
            return {"audio": lambda w: self._indices("audio", power(w)),
                    "visual": lambda v: self._indices("visual", video_to_model_range(v))}
        return {"audio": lambda w: self._features("audio", power(w)),
                "visual": lambda v: self._features("visual", video_to_model_range(v))}

    def _features(self, modality: str, x: jax.Array) -> jax.Array:
        """Model inputs [N, ...] -> flattened channel-major pre-quantisation outputs [N, ·] (no gradient)."""
        model = self.models[modality]
        return jax.lax.stop_gradient(channel_major(model.module.apply(model.variables, x, method="encode")))

    def decode(self, x_audio: jax.Array, x_visual: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Features [N, 512], [N, 2048] (either may be None) -> quantised with the frozen codebooks and
        decoded: (power [N, 513], images [N, H, W, 3] in [-0.5, 0.5])."""
        out = []
        for modality, x in (("audio", x_audio), ("visual", x_visual)):
            if x is None:  # a unimodal model (DSAE)
                out.append(None)
                continue
            model = self.models[modality]
            z_e = from_channel_major(x, self.latent_shapes[modality])
            z_q, _ = model.module.apply(model.variables, z_e, method="quantize")
            out.append(model.module.apply(model.variables, z_q, method="decode")["recon"])
        return tuple(out)

    def decode_indices(self, modality: str, indices: jax.Array) -> jax.Array:
        """Index grids [N, *grid] -> the frozen decoder's output: power [N, 513] or images in [-0.5, 0.5]."""
        model = self.models[modality]
        return model.module.apply(model.variables, indices.astype(jnp.int32), method="decode_indices")["recon"]

    def encode_batch(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """A window batch {"audio": [B, samples], "video": [B, T, H, W, 3]} -> features [B, T, ·]."""
        b, t = batch["video"].shape[:2]
        power = audio_frames_to_power(batch["audio"], self.audio_cfg)  # [B*T, 513]
        x_a, x_v = self.encode(power, video_to_model_range(batch["video"]))
        return x_a.reshape(b, t, -1), x_v.reshape(b, t, -1)


def utterance_frames(record: Mapping, audio_cfg, where: str, audio_rate: int = 1) -> dict:
    """One utterance as aligned per-frame inputs: n video frames [n, H, W, 3] uint8, ``audio_rate`` * n
    audio windows [r * n, n_fft] (each frames to exactly one centre-padded STFT frame; r = 2 in the VQ-MAE
    setting, 50 Hz audio against 25 fps video), and the peak-normalised waveform."""
    n_fft, hop = int(audio_cfg["n_fft"]), int(audio_cfg["hop"])
    utt = decode_utterance(record, hop, where)
    audio_frames = 1 + len(utt["wav"]) // hop  # librosa's center=True frame count
    n = min(len(utt["video"]), audio_frames // audio_rate)
    padded = audio_lib.pad_for_center(utt["wav"], n_fft, str(audio_cfg["pad_mode"]))
    return {"windows": audio_frame_windows(padded, np.arange(n * audio_rate), n_fft, hop),
            "video": utt["video"][:n], "wav": utt["wav"], "num_frames": n}


def iter_utterance_features(encoders: Mapping[str, Callable], utterances: Iterable[dict], *, group: int = 8,
                            chunk: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """{modality: outputs [frames, ...]} of each ``utterance_frames`` dict, in order.

    ``encoders``: {"audio": f(windows [C, n_fft]), "visual": f(video [C, H, W, 3])}, jitted frame-wise
    functions (e.g. of ``FrozenTokenizers.frame_encoders``) compiled once by the caller and reused: a
    fresh ``jax.jit`` per call would recompile the encoders every time. Frames of ``group`` utterances
    are concatenated and encoded in fixed chunks of ``chunk`` frames (one compiled shape; padding wastes
    < one chunk per group).
    """
    inputs = {"audio": "windows", "visual": "video"}

    def encode(fn, frames: np.ndarray) -> np.ndarray:
        total = len(frames)
        padded = np.pad(frames, ((0, -(-total // chunk) * chunk - total),) + ((0, 0),) * (frames.ndim - 1))
        return np.concatenate([jax.device_get(fn(padded[s:s + chunk])) for s in range(0, len(padded), chunk)])

    def flush(pending):
        out = [{} for _ in pending]
        for modality, fn in encoders.items():
            key = inputs[modality]
            encoded = encode(fn, np.concatenate([u[key] for u in pending]))
            offsets = np.cumsum([0] + [len(u[key]) for u in pending])
            for o, s, e in zip(out, offsets[:-1], offsets[1:]):
                o[modality] = encoded[s:e]
        return out

    pending = []
    for utt in utterances:
        pending.append(utt)
        if len(pending) == group:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)


def record_meta(record: Mapping, index: int) -> dict:
    """A record's utterance id (its index if it has none), speaker and the labels it carries (LABEL_FIELDS)."""
    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    meta = {"utterance_id": text(record.get("utterance_id", index))}
    if "speaker" in record:
        meta["speaker"] = text(record["speaker"])
    return {**meta, **{k: int(record[k]) for k in LABEL_FIELDS if k in record}}


class FeatureSource:
    """Random access to a feature cache (``build_feature_cache``): item i is {"x_audio": [r * n, ...],
    "x_visual": [n, ...]} memory-mapped, with the utterance's id, speaker and labels (``record_meta``)."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, INDEX_FILE)) as f:
            self.index = json.load(f)
        self.description = f"feature cache {directory} of {self.index['fingerprint']['source']}"
        total = int(self.index["total_frames"])
        self.rates = {m: int(r) for m, r in self.index["rates"].items()}
        self._arrays = {m: np.memmap(os.path.join(directory, f"{m}.bin"), np.dtype(self.index["dtypes"][m]), "r",
                                     shape=(total * self.rates[m], *self.index["frame_shapes"][m]))
                        for m in MODALITIES}

    def __len__(self) -> int:
        return len(self.index["utterances"])

    def __getitem__(self, i: int) -> dict:
        u = self.index["utterances"][i]
        s, n = int(u["offset"]), int(u["num_frames"])
        meta = {k: v for k, v in u.items() if k not in ("offset", "num_frames")}  # record, id, speaker, labels
        return {**meta, **{f"x_{m}": np.asarray(a[s * self.rates[m]:(s + n) * self.rates[m]])
                           for m, a in self._arrays.items()}}


def _fingerprint(tokenizers: FrozenTokenizers, source, min_frames: int, outputs: str, audio_rate: int) -> dict:
    return {"format": CACHE_FORMAT, "tokenizers": tokenizers.fingerprint(), "source": source.description,
            "records": len(source), "audio": {k: str(v) for k, v in dict(tokenizers.audio_cfg).items()},
            "min_frames": min_frames, "outputs": outputs, "audio_rate": audio_rate}


def build_feature_cache(directory: str, tokenizers: FrozenTokenizers, source, *, min_frames: int,
                        outputs: str = "features", audio_rate: int = 1, log=print) -> FeatureSource:
    """The tokenizers' ``outputs`` ("features" for stage 2, "indices" for VQ-MAE) for every record of
    ``source``, written to ``directory`` (reused when its fingerprint matches: same tokenizer checkpoints,
    data, framing and outputs). Utterances with fewer than ``min_frames`` video frames are skipped, listed
    in the index (``skipped``) and counted in a printed message."""
    fingerprint = _fingerprint(tokenizers, source, min_frames, outputs, audio_rate)
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            if json.load(f).get("fingerprint") == fingerprint:
                return FeatureSource(directory)
        log(f"[avrep] feature cache {directory} is stale (other tokenizers, data or outputs): rebuilding")
    tmp = f"{directory}.tmp-{hashlib.sha1(directory.encode()).hexdigest()[:8]}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    utterances, skipped, layout = [], [], {}

    def frames():
        for i in range(len(source)):
            record = source[i]
            utt = utterance_frames(record, tokenizers.audio_cfg, f"{source.description}: record {i}", audio_rate)
            meta = {"record": i, **record_meta(record, i), "num_frames": utt["num_frames"]}
            if utt["num_frames"] < min_frames:
                skipped.append(meta)
                continue
            utterances.append(meta)
            yield utt

    offset = 0
    encoders = {m: jax.jit(f) for m, f in tokenizers.frame_encoders(outputs).items()}
    files = {m: open(os.path.join(tmp, f"{m}.bin"), "wb") for m in MODALITIES}
    try:
        for k, out in enumerate(iter_utterance_features(encoders, frames())):
            if not all(np.all(np.isfinite(x)) for x in out.values()):
                raise DataError(f"{source.description}: record {utterances[k]['record']} gives non-finite "
                                f"tokenizer outputs (check the tokenizer checkpoints {tokenizers.paths})")
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
        json.dump({"fingerprint": fingerprint, "dtypes": {m: d for m, (d, _) in layout.items()},
                   "frame_shapes": {m: s for m, (_, s) in layout.items()},
                   "rates": {"audio": audio_rate, "visual": 1}, "total_frames": offset,
                   "utterances": utterances, "skipped": skipped}, f)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    if skipped:
        log(f"[avrep] feature cache: skipped {len(skipped)} utterance(s) shorter than {min_frames} frames "
            f"(listed in {index_path})")
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
