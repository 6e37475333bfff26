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

from avrep import audio as audio_lib
from data_pipelines.pipelines import DataError, audio_frame_windows, decode_utterance

MODALITIES = ("audio", "visual")
INDEX_FILE = "index.json"
CACHE_FORMAT = 2  # bump when the files or the index change
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
            self.models[modality], self.paths[modality] = model, os.path.abspath(path)
        size = int(config["data"]["image_size"])
        bins = int(self.audio_cfg["n_fft"]) // 2 + 1
        self.latent_shapes = {
            "audio": self._encode_shape("audio", (1, bins)),
            "visual": self._encode_shape("visual", (1, size, size, 3)),
        }
        self.dims = {m: int(np.prod(s)) for m, s in self.latent_shapes.items()}

    def _encode_shape(self, modality: str, input_shape) -> tuple[int, ...]:
        model = self.models[modality]
        out = jax.eval_shape(lambda x: model.module.apply(model.variables, x, method="encode"),
                             jax.ShapeDtypeStruct(input_shape, jnp.float32))
        return tuple(out.shape[1:])

    def fingerprint(self) -> dict:
        return {m: {"path": self.paths[m], "step": self.models[m].step} for m in MODALITIES}

    def encode(self, power: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """power [N, 513], images [N, H, W, 3] in [-0.5, 0.5] -> features [N, 512], [N, 2048] (no gradient)."""
        a, v = self.models["audio"], self.models["visual"]
        z_a = a.module.apply(a.variables, power, method="encode")
        z_v = v.module.apply(v.variables, images, method="encode")
        return jax.lax.stop_gradient(channel_major(z_a)), jax.lax.stop_gradient(channel_major(z_v))

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

    def encode_frames(self, windows: jax.Array, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-frame audio windows [N, n_fft] and uint8 video frames [N, H, W, 3] -> features [N, ·]."""
        return self.encode(audio_frames_to_power(windows, self.audio_cfg), video_to_model_range(video))

    def encode_batch(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """A window batch {"audio": [B, samples], "video": [B, T, H, W, 3]} -> features [B, T, ·]."""
        b, t = batch["video"].shape[:2]
        power = audio_frames_to_power(batch["audio"], self.audio_cfg)  # [B*T, 513]
        x_a, x_v = self.encode(power, video_to_model_range(batch["video"]))
        return x_a.reshape(b, t, -1), x_v.reshape(b, t, -1)


def utterance_frames(record: Mapping, audio_cfg, where: str) -> dict:
    """One utterance as aligned per-frame inputs: audio windows [n, n_fft] (each frames to exactly one
    centre-padded STFT frame), video [n, H, W, 3] uint8, and the peak-normalised waveform."""
    n_fft, hop = int(audio_cfg["n_fft"]), int(audio_cfg["hop"])
    utt = decode_utterance(record, hop, where)
    n = utt["num_frames"]
    padded = audio_lib.pad_for_center(utt["wav"], n_fft, str(audio_cfg["pad_mode"]))
    return {"windows": audio_frame_windows(padded, np.arange(n), n_fft, hop), "video": utt["video"][:n],
            "wav": utt["wav"], "num_frames": n}


def iter_utterance_features(encode_frames: Callable, utterances: Iterable[dict], *, group: int = 8,
                            chunk: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Features (x_audio [n, ·], x_visual [n, ·]) of each ``utterance_frames`` dict, in order.

    ``encode_frames(windows [C, n_fft], video [C, H, W, 3])`` is a jitted frame-wise function (e.g.
    ``jax.jit(FrozenTokenizers.encode_frames)``), compiled once by the caller and reused: a fresh
    ``jax.jit`` per call would recompile the encoders every time. Frames of ``group`` utterances are
    concatenated and encoded in fixed chunks of ``chunk`` frames (one compiled shape; padding wastes
    < one chunk per group).
    """
    encode = encode_frames

    def flush(pending):
        windows = np.concatenate([u["windows"] for u in pending])
        video = np.concatenate([u["video"] for u in pending])
        total = len(windows)
        padded = -(-total // chunk) * chunk
        windows = np.pad(windows, ((0, padded - total), (0, 0)))
        video = np.pad(video, ((0, padded - total),) + ((0, 0),) * 3)
        parts = [jax.device_get(encode(windows[s:s + chunk], video[s:s + chunk])) for s in range(0, padded, chunk)]
        x_a = np.concatenate([p[0] for p in parts])[:total]
        x_v = np.concatenate([p[1] for p in parts])[:total]
        offsets = np.cumsum([0] + [u["num_frames"] for u in pending])
        return [(x_a[s:e], x_v[s:e]) for s, e in zip(offsets[:-1], offsets[1:])]

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
    """Random access to cached per-utterance features: {"x_audio": [n, 512], "x_visual": [n, 2048],
    "utterance_id"}, memory-mapped from a ``FeatureCache`` directory."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, INDEX_FILE)) as f:
            self.index = json.load(f)
        self.description = f"feature cache {directory} of {self.index['fingerprint']['source']}"
        total = int(self.index["total_frames"])
        self._arrays = {m: np.memmap(os.path.join(directory, f"{m}.f32"), np.float32, "r",
                                     shape=(total, int(self.index["dims"][m]))) for m in MODALITIES}

    def __len__(self) -> int:
        return len(self.index["utterances"])

    def __getitem__(self, i: int) -> dict:
        u = self.index["utterances"][i]
        s, n = int(u["offset"]), int(u["num_frames"])
        return {"x_audio": np.asarray(self._arrays["audio"][s:s + n]),
                "x_visual": np.asarray(self._arrays["visual"][s:s + n]), "utterance_id": u["utterance_id"]}


def _fingerprint(tokenizers: FrozenTokenizers, source, min_frames: int) -> dict:
    return {"format": CACHE_FORMAT, "tokenizers": tokenizers.fingerprint(), "source": source.description, "records": len(source),
            "audio": {k: str(v) for k, v in dict(tokenizers.audio_cfg).items()}, "min_frames": min_frames}


def build_feature_cache(directory: str, tokenizers: FrozenTokenizers, source, *, min_frames: int,
                        log=print) -> FeatureSource:
    """Features of every record of ``source`` written to ``directory`` (reused when its fingerprint
    matches: same tokenizer checkpoints, data and framing). Utterances shorter than ``min_frames``
    are skipped and listed in the index (``skipped``)."""
    fingerprint = _fingerprint(tokenizers, source, min_frames)
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            if json.load(f).get("fingerprint") == fingerprint:
                return FeatureSource(directory)
        log(f"[avrep] feature cache {directory} is stale (other tokenizers or data): rebuilding")
    tmp = f"{directory}.tmp-{hashlib.sha1(directory.encode()).hexdigest()[:8]}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    utterances, skipped = [], []

    def frames():
        for i in range(len(source)):
            record = source[i]
            utt = utterance_frames(record, tokenizers.audio_cfg, f"{source.description}: record {i}")
            meta = {"record": i, **record_meta(record, i), "num_frames": utt["num_frames"]}
            if utt["num_frames"] < min_frames:
                skipped.append(meta)
                continue
            utterances.append(meta)
            yield utt

    offset = 0
    files = {m: open(os.path.join(tmp, f"{m}.f32"), "wb") for m in MODALITIES}
    try:
        for k, (x_a, x_v) in enumerate(iter_utterance_features(jax.jit(tokenizers.encode_frames), frames())):
            if not (np.all(np.isfinite(x_a)) and np.all(np.isfinite(x_v))):
                raise DataError(f"{source.description}: record {utterances[k]['record']} gives non-finite "
                                f"tokenizer features (check the tokenizer checkpoints {tokenizers.paths})")
            files["audio"].write(np.ascontiguousarray(x_a, np.float32).tobytes())
            files["visual"].write(np.ascontiguousarray(x_v, np.float32).tobytes())
            utterances[k]["offset"] = offset
            offset += len(x_a)
    finally:
        for f in files.values():
            f.close()
    if not utterances:
        raise DataError(f"{source.description}: no utterance has at least {min_frames} frames")
    with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump({"fingerprint": fingerprint, "dims": tokenizers.dims, "total_frames": offset,
                   "utterances": utterances, "skipped": skipped}, f)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    if skipped:
        log(f"[avrep] feature cache: skipped {len(skipped)} utterance(s) shorter than {min_frames} frames "
            f"(listed in {index_path})")
    return FeatureSource(directory)
