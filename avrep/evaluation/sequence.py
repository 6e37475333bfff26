"""Trained sequence VAEs (MDVAE, DSAE, JointMVAE; on VQ or raw features) applied to whole utterances.

A model sees windows of T frames (its training length). An utterance of n >= T frames is cut
into windows starting at 0, T, 2T, ... plus one ending at frame n (overlapping the one before);
each frame's reconstruction comes from the first window that covers it. Inference uses the
posterior means (``sample=False``). Utterances shorter than T are skipped and counted.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax
import numpy as np

from avrep.features.cache import build_feature_cache, record_meta
from avrep.features.inputs import iter_utterance_features, utterance_frames
from data_pipelines.spec import FEATURE_MODALITIES, feature_field

LATENTS = {"mdvae": ("w", "z_av", "z_a", "z_v"), "dsae": ("w", "z"), "jointmvae": ("z",)}


def window_starts(n: int, t: int) -> list[int]:
    """Starts of the windows of ``t`` frames that cover ``n >= t`` frames."""
    starts = list(range(0, n - t + 1, t))
    if starts[-1] + t < n:
        starts.append(n - t)
    return starts


def batched_apply(fn, variables, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``fn(variables, {k: [batch, ...]}) -> {k: [batch, ...]}`` over [N, ...] arrays, in fixed batches
    (the last one zero-padded) so that it compiles once."""
    n = len(next(iter(inputs.values())))
    parts = []
    for s in range(0, n, batch):
        chunk = {k: v[s : s + batch] for k, v in inputs.items()}
        m = len(next(iter(chunk.values())))
        chunk = {k: np.pad(v, ((0, batch - m),) + ((0, 0),) * (v.ndim - 1)) for k, v in chunk.items()}
        out = jax.device_get(fn(variables, chunk))
        parts.append({k: v[:m] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class SequenceModel:
    """A loaded run (``avrep.load_checkpoint``) of task mdvae / dsae / jointmvae."""

    def __init__(self, model, *, batch_windows: int = 16):
        self.model, self.config = model, model.config
        if model.config.get("task") not in LATENTS:
            raise ValueError(
                f"SequenceModel: expected a checkpoint of task {sorted(LATENTS)}, got a "
                f"{model.config.get('task')!r} run ({model.config.get('name')})"
            )
        self.task = model.task
        self.family = self.task.family
        self.name = self.task.display_name
        self.t = self.task.pipeline.frames_per_example
        self.outputs = self.task.inputs  # the modalities it reconstructs
        self.batch = batch_windows
        module, task = model.module, self.task
        names = LATENTS[self.family]

        def encode(variables, x_audio, x_visual):
            x = task.model_inputs(task.scale(variables, {"audio": x_audio, "visual": x_visual}))
            enc = module.apply(task.module_variables(variables), *x, sample=False, method="encode")
            if self.family == "jointmvae":
                return {"z": enc["sample"]}
            return {n: enc[n]["sample"] for n in names}

        def decode(variables, latents):
            out = module.apply(task.module_variables(variables), *(latents[n] for n in names), method="decode")
            return task.scale(variables, out, inverse=True)

        def continue_sequence(variables, x_audio, x_visual, steps):
            x = task.scale(variables, {"audio": x_audio, "visual": x_visual})
            out = module.apply(
                task.module_variables(variables),
                x["audio"],
                x["visual"],
                steps,
                sample=False,
                method="continue_sequence",
            )
            return task.scale(variables, out, inverse=True)

        self._encode, self._decode = jax.jit(encode), jax.jit(decode)
        self._continue = jax.jit(continue_sequence, static_argnums=3)
        self._to_signals = jax.jit(task.decode_frames)
        # compiled once, reused by every features() call
        self._frame_encoders = {m: jax.jit(f) for m, f in task.frame_encoders().items()}

    # ------------------------------------------------------------------ features
    def features(self, utterances: Iterable[dict]) -> list[dict[str, np.ndarray]]:
        """``utterance_frames`` dicts -> per-utterance input features {"audio": [n, ·], "visual": [n, ·]}."""
        return list(iter_utterance_features(self._frame_encoders, utterances))

    def _read(self, source, indices: Iterable[int]) -> tuple[list[dict], list[dict], list[int]]:
        """(metadata, ``utterance_frames``) of the records at ``indices`` with >= T frames, and the others."""
        metas, utts, skipped = [], [], []
        for i in indices:
            record = source[i]
            utt = utterance_frames(record, self.config.audio, f"{source.description}: record {i}")
            if utt["num_frames"] < self.t:
                skipped.append(i)
            else:
                metas.append(record_meta(record, i))
                utts.append({**utt, "utterance_id": metas[-1]["utterance_id"]})
        return metas, utts, skipped

    def split_features(
        self, source, *, limit: int | None = None, indices: Iterable[int] | None = None
    ) -> tuple[list[dict], list[dict], list[int]]:
        """Utterances of a split (``utterance_frames``; the first ``limit``, or those at ``indices``), their
        features, and the records skipped for being shorter than T."""
        if indices is None:
            indices = range(len(source) if limit is None else min(limit, len(source)))
        _, utts, skipped = self._read(source, indices)
        return utts, self.features(utts), skipped

    def split_latent_inputs(self, source, *, cache_dir: str) -> tuple[list[dict], list[dict[str, np.ndarray]]]:
        """Features of every utterance of a split with >= T frames, and per utterance its id and labels
        ({utterance_id, speaker, emotion, intensity}). VQ features go through the run's feature
        cache (built once, reused by later evaluations)."""
        if self.task.tokenizers is not None:
            cache = build_feature_cache(cache_dir, self.task.tokenizers, source, min_frames=self.t)
            records = (cache[i] for i in range(len(cache)))
            return cache.index["utterances"], [{m: r[feature_field(m)] for m in FEATURE_MODALITIES} for r in records]
        metas, utts, _ = self._read(source, range(len(source)))
        return metas, self.features(utts)

    # ------------------------------------------------------------------ latents
    def _batched(self, fn, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batched_apply(fn, self.model.variables, inputs, self.batch)

    def encode(self, x_audio: np.ndarray, x_visual: np.ndarray) -> dict[str, np.ndarray]:
        """Windows [N, T, ·] -> posterior means {latent: [N, ·] (static) or [N, T, ·]}."""
        return self._batched(
            lambda v, b: self._encode(v, b["audio"], b["visual"]), {"audio": x_audio, "visual": x_visual}
        )

    def decode(self, latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Latents -> reconstructed features {modality: [N, T, ·]}."""
        return self._batched(self._decode, latents)

    def encode_utterances(self, xs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Latents of every window of each utterance: [{latent: [windows, ...]}]."""
        windows, counts = self._windows(xs)
        latents = self.encode(windows["audio"], windows["visual"])
        bounds = np.cumsum([0] + counts)
        return [{k: v[s:e] for k, v in latents.items()} for s, e in zip(bounds[:-1], bounds[1:])]

    def _windows(self, xs):
        out, counts = {"audio": [], "visual": []}, []
        for x in xs:
            starts = window_starts(len(x["audio"]), self.t)
            counts.append(len(starts))
            for m in out:
                out[m].extend(x[m][s : s + self.t] for s in starts)
        return {m: np.stack(v) for m, v in out.items()}, counts

    def reconstruct(self, xs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Analysis-resynthesis of whole utterances' features: [{modality: [n, ·]}] for ``self.outputs``."""
        windows, counts = self._windows(xs)
        recon = self.decode(self.encode(windows["audio"], windows["visual"]))
        results, k = [], 0
        for x, count in zip(xs, counts):
            n = len(x["audio"])
            out = {m: np.empty((n, recon[m].shape[-1]), np.float32) for m in self.outputs}
            starts = window_starts(n, self.t)
            for j in reversed(range(len(starts))):  # earlier windows overwrite the overlap
                for m in self.outputs:
                    out[m][starts[j] : starts[j] + self.t] = recon[m][k + j]
            results.append(out)
            k += count
        return results

    def to_signals(self, x: Mapping[str, np.ndarray], chunk: int = 64) -> dict[str, np.ndarray]:
        """Features [n, ·] -> {"power": [n, 513], "video": [n, H, W, 3] in [0, 1]} for the modalities given."""
        n = len(next(iter(x.values())))
        out: dict[str, list] = {}
        for s in range(0, n, chunk):
            part = {m: np.pad(v[s : s + chunk], ((0, chunk - len(v[s : s + chunk])), (0, 0))) for m, v in x.items()}
            power, video = jax.device_get(self._to_signals(part.get("audio"), part.get("visual")))
            m = min(chunk, n - s)
            if power is not None:
                out.setdefault("power", []).append(power[:m])
            if video is not None:
                out.setdefault("video", []).append(video[:m])
        return {k: np.concatenate(v) for k, v in out.items()}

    def continue_sequence(self, x_audio: np.ndarray, x_visual: np.ndarray, steps: int) -> dict[str, np.ndarray]:
        """MDVAE: windows [B, T, ·] analysed, then ``steps`` frames following the learned priors' means
        from the same w; {modality: [B, T + steps, ·]} features."""
        if self.family != "mdvae":
            raise ValueError(f"{self.name}: generation from the dynamical priors needs an MDVAE run")
        return jax.device_get(self._continue(self.model.variables, x_audio, x_visual, steps))
