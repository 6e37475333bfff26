"""The frozen VQ-VAE tokenizers that VQ-MDVAE (stage 2) and VQ-MAE read, named by ``config.tokenizers``.

Stage 2 models consume the tokenizers' pre-quantisation encoder outputs, flattened per frame in the authors'
(PyTorch, channel-major) order: audio [513] power -> z_e [64, 8] -> [8 * 64 = 512]; video [64, 64, 3] ->
z_e [8, 8, 32] -> [2048]. Decoding goes back the same way: unflatten, quantise with the frozen codebook,
run the frozen decoder. VQ-MAE reads their index grids.

Building a task reads only the tokenizers' configs (shapes, codebook sizes); their variables are restored on
first use and kept for the process (``restored_variables``), so an evaluation that builds several tasks on
the same tokenizers restores each once. Only the modalities a model reads are loaded: an audio-only VQ-MAE
names no visual tokenizer, and its corpora may hold 1x1 placeholder frames.

BatchNorm statistics (config key ``tokenizers.batch_stats_mode``, audio VQ-VAEs with BatchNorm): empty keeps the
tokenizer run's own ``model.batch_stats_mode``; ``"running"`` uses its stored running statistics (a frame's tokens
depend on that frame alone); ``"batch"`` normalises with the statistics of the frames encoded together, as the
authors' VQ-MAE-S code tokenises (train-mode BatchNorm, no update of the stored statistics), which is what their
released speech VQ-VAE's tokens were made with. In ``"batch"`` mode the caches encode each utterance on its own,
unpadded (``batch_statistics``), so its tokens depend only on its own frames.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from avrep import runs
from avrep.features.inputs import audio_frames_to_power, channel_major, from_channel_major, video_to_model_range
from avrep.models.vqvae import BATCH_STATS_MODES, build_vqvae

MODALITIES = ("audio", "visual")
BATCH_STATS_OPTION = ("tokenizers", "batch_stats_mode")  # config key: "" (the run's own), "running" or "batch"
CACHE_OUTPUTS = ("features", "indices")
_RESTORED: collections.OrderedDict = collections.OrderedDict()  # (path, step, stamp) -> variables
_MAX_RESTORED = 8


def restored_variables(path: str, step: int, abstract) -> dict:
    """A run's variables at ``step``, restored once per process (kept for the 8 most recent checkpoints; a
    checkpoint rewritten in place has another modification time and is restored again)."""
    stamp = os.path.getmtime(os.path.join(runs.resolve_checkpoint(path)[0], str(step)))
    key = (os.path.realpath(path), step, stamp)
    if key not in _RESTORED:
        with jax.ensure_compile_time_eval():  # first use may be inside a traced function: restore concretely
            _RESTORED[key] = runs.restore_variables(path, abstract, step)
        while len(_RESTORED) > _MAX_RESTORED:
            _RESTORED.popitem(last=False)
    _RESTORED.move_to_end(key)
    return _RESTORED[key]


# The settings a tokenizer must share with the run that reads it (config block, key), per modality.
TOKENIZER_SETTINGS = {
    "audio": (("audio", "sample_rate"), ("audio", "n_fft"), ("audio", "hop")),
    "visual": (("data", "image_size"), ("data", "fps")),
}


def check_tokenizer_settings(config: Mapping, modality: str, path: str, tokenizer_config) -> None:
    """Raises, naming the key, when the tokenizer was trained with another sample rate, FFT, hop, image size or
    frame rate than this run uses (it would train on silently wrong features, or fail after the cache is built)."""
    for block, key in TOKENIZER_SETTINGS[modality]:
        theirs, ours = tokenizer_config.get(block, {}).get(key), config[block].get(key)
        if theirs is not None and ours is not None and theirs != ours:
            raise ValueError(
                f"config key tokenizers.{modality}={path}: the tokenizer was trained with {block}.{key}={theirs}, "
                f"this run has {block}.{key}={ours}; expected a tokenizer of this run's setting"
            )


def _missing_tokenizer(config: Mapping, modality: str) -> str:
    finetune = config.get("finetune") or {}
    if "pretrained" in finetune:  # fine-tuning takes its tokenizers from the pre-training run
        pretrained = str(finetune["pretrained"])
        if not pretrained:
            return "config key finetune.pretrained is empty: expected the run directory of a VQ-MAE pre-training run"
        if not os.path.isdir(pretrained):
            return f"config key finetune.pretrained={pretrained} does not exist: expected a VQ-MAE pre-training run"
    return (
        f"config key tokenizers.{modality} is empty: expected the run directory of a "
        f"trained {modality} VQ-VAE (e.g. W/vqvae_{modality})"
    )


def _batch_stats_override(config: Mapping) -> dict:
    """``{"batch_stats_mode": mode}`` from config key tokenizers.batch_stats_mode, or {} when it is empty."""
    block, key = BATCH_STATS_OPTION
    mode = str((config.get(block) or {}).get(key, "") or "")
    if mode and mode not in BATCH_STATS_MODES:
        raise ValueError(
            f"config key {block}.{key}={mode!r}: expected '' (the tokenizer's own) or one of {BATCH_STATS_MODES}"
        )
    return {key: mode} if mode else {}


class FrozenTokenizers:
    """The trained VQ-VAEs named by ``config.tokenizers`` (run directories), for ``modalities`` (default both:
    VQ-MDVAE; a VQ-MAE loads those its model reads)."""

    def __init__(self, config: Mapping, modalities: tuple[str, ...] = MODALITIES):
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown or not modalities:
            raise ValueError(f"FrozenTokenizers: modalities {tuple(modalities)}; expected some of {MODALITIES}")
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.audio_cfg = config["audio"]
        self.paths, self.steps, self.configs, self.modules = {}, {}, {}, {}
        size = int(config["data"]["image_size"])
        inputs = {"audio": (1, int(self.audio_cfg["n_fft"]) // 2 + 1), "visual": (1, size, size, 3)}
        self._abstract, self.latent_shapes = {}, {}
        override = _batch_stats_override(config)
        for modality in self.modalities:
            path = str(config["tokenizers"][modality])
            if not path:
                raise ValueError(_missing_tokenizer(config, modality))
            tokenizer_config = runs.read_config(path)
            if tokenizer_config.get("task") != "vqvae" or tokenizer_config.model.get("modality") != modality:
                raise ValueError(
                    f"config key tokenizers.{modality}={path} is a "
                    f"{tokenizer_config.get('task')}/{tokenizer_config.model.get('modality')} run; "
                    f"expected a {modality} VQ-VAE"
                )
            check_tokenizer_settings(config, modality, path, tokenizer_config)
            # Resolved: a run reached through a symlinked directory is the same tokenizer (same cache key).
            self.paths[modality] = os.path.realpath(path)
            self.steps[modality] = runs.resolve_checkpoint(path)[1]
            self.configs[modality] = tokenizer_config
            fields = dict(tokenizer_config.model)
            if fields.get("batch_norm"):  # the statistics option only means something with BatchNorm
                fields.update(override)
            module = self.modules[modality] = build_vqvae(fields)
            x = jax.ShapeDtypeStruct(inputs[modality], jnp.float32)
            self._abstract[modality] = jax.eval_shape(
                lambda x, module=module: dict(module.init({"params": jax.random.key(0)}, x, train=False)), x
            )
            z_e = jax.eval_shape(
                lambda v, x, module=module: module.apply(v, x, method="encode"), self._abstract[modality], x
            )
            self.latent_shapes[modality] = tuple(z_e.shape[1:])
        self.dims = {m: int(np.prod(s)) for m, s in self.latent_shapes.items()}
        self.num_codes = {m: int(self.configs[m].model.num_codes) for m in self.modalities}
        # Batch statistics: a frame's tokens depend on the frames encoded with it, so encode utterance by utterance.
        self.batch_statistics = any(self._batch_stats(m) for m in self.modalities)

    def _batch_stats(self, modality: str) -> bool:
        module = self.modules[modality]
        return bool(getattr(module, "batch_norm", False)) and module.batch_stats_mode == "batch"

    def variables(self, modality: str) -> dict:
        """The tokenizer's variables, restored on first use (once per process, see ``restored_variables``)."""
        return restored_variables(self.paths[modality], self.steps[modality], self._abstract[modality])

    def _apply(self, modality: str, *args, **kwargs):
        return self.modules[modality].apply(self.variables(modality), *args, **kwargs)

    def fingerprint(self) -> dict:
        """Identifies the tokenizers by content (weights and config), not only by path and step: a tokenizer
        retrained into the same directory gives another fingerprint."""
        return {
            m: {
                "path": self.paths[m],
                "step": self.steps[m],
                "digest": runs.content_digest(self.paths[m], self.steps[m]),
                # Batch statistics give other tokens than running ones (the default, left out of older fingerprints).
                **({"batch_stats_mode": "batch"} if self._batch_stats(m) else {}),
            }
            for m in self.modalities
        }

    def encode(self, power: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """power [N, 513], images [N, H, W, 3] in [-0.5, 0.5] -> features [N, 512], [N, 2048] (no gradient)."""
        return self._features("audio", power), self._features("visual", images)

    def indices(self, modality: str, x: jax.Array) -> jax.Array:
        """Model inputs [N, ...] -> VQ indices [N, *grid] (int16: the codebooks hold at most 32767 codes)."""
        _, indices = self._apply(modality, self._apply(modality, x, method="encode"), method="quantize")
        return indices.astype(jnp.int16)

    def frame_encoders(self, outputs: str = "features") -> dict[str, Callable]:
        """Per-modality frame-wise encoders (to jit): audio windows [N, n_fft] / uint8 frames [N, H, W, 3] ->
        flattened features [N, ·] (``outputs="features"``, stage-2 inputs) or index grids (``"indices"``:
        audio [N, 64], visual [N, 24, 24] in the VQ-MAE setting)."""
        if outputs not in CACHE_OUTPUTS:
            raise ValueError(f"frame_encoders: outputs must be one of {CACHE_OUTPUTS}, got {outputs!r}")
        power = lambda w: audio_frames_to_power(w, self.audio_cfg)  # noqa: E731
        if outputs == "indices":
            encoders = {
                "audio": lambda w: self.indices("audio", power(w)),
                "visual": lambda v: self.indices("visual", video_to_model_range(v)),
            }
        else:
            encoders = {
                "audio": lambda w: self._features("audio", power(w)),
                "visual": lambda v: self._features("visual", video_to_model_range(v)),
            }
        return {m: encoders[m] for m in self.modalities}

    def _features(self, modality: str, x: jax.Array) -> jax.Array:
        """Model inputs [N, ...] -> flattened channel-major pre-quantisation outputs [N, ·] (no gradient)."""
        return jax.lax.stop_gradient(channel_major(self._apply(modality, x, method="encode")))

    def decode(self, x_audio: jax.Array, x_visual: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Features [N, 512], [N, 2048] (either may be None) -> quantised with the frozen codebooks and
        decoded: (power [N, 513], images [N, H, W, 3] in [-0.5, 0.5])."""
        out = []
        for modality, x in (("audio", x_audio), ("visual", x_visual)):
            if x is None:  # a unimodal model (DSAE)
                out.append(None)
                continue
            z_q, _ = self._apply(modality, from_channel_major(x, self.latent_shapes[modality]), method="quantize")
            out.append(self._apply(modality, z_q, method="decode")["recon"])
        return tuple(out)

    def decode_indices(self, modality: str, indices: jax.Array) -> jax.Array:
        """Index grids [N, *grid] -> the frozen decoder's output: power [N, 513] or images in [-0.5, 0.5]."""
        return self._apply(modality, indices.astype(jnp.int32), method="decode_indices")["recon"]

    def encode_batch(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """A window batch {"audio": [B, samples], "video": [B, T, H, W, 3]} -> features [B, T, ·]."""
        b, t = batch["video"].shape[:2]
        power = audio_frames_to_power(batch["audio"], self.audio_cfg)  # [B*T, 513]
        x_a, x_v = self.encode(power, video_to_model_range(batch["video"]))
        return x_a.reshape(b, t, -1), x_v.reshape(b, t, -1)
