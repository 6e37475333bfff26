"""Training task for the sequence VAEs: MDVAE / VQ-MDVAE and the DSAE and JointMVAE baselines.

``config.task`` picks the model family ("mdvae", "dsae", "jointmvae"), ``config.features.kind`` its
inputs, per frame:
* "vq": the frozen tokenizers' flattened pre-quantisation encoder outputs (VQ-MDVAE stage 2,
  [MDVAE] Sec. 3.2; audio 512, visual 2048), read from a feature cache built once per training
  split (``data.feature_cache``, default) or computed on device inside every step;
* "raw": log power spectra (513) and pixels in [-0.5, 0.5] (64 * 64 * 3), the paper's "MDVAE"
  and "DSAE" rows. Log power, not power: a unit-variance Gaussian on linear power would only
  model the few loudest bins (my choice; the paper gives no details).

``features.scaling``: "none" (the paper: features as they come), "standardize" (per-dimension
mean and std of the training inputs, kept in the checkpoint's ``feature_stats`` collection) or
"modality" (per-dimension mean, one std per modality: the root mean per-dimension variance). The
VQ visual features have a per-dimension variance near 0.016 against 2.2 for audio, so under the
unit-variance likelihood the visual dynamics cost little to ignore and z_v collapses;
standardising gives every dimension the same weight, but also amplifies near-constant dimensions;
"modality" only rebalances the two modalities (measured trade-offs in the README).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from avrep.features.cache import FeatureSource, feature_cache_dir, shared_feature_cache
from avrep.features.inputs import audio_frames_to_power, iter_utterance_features, utterance_frames, video_to_model_range
from avrep.features.tokenizers import FrozenTokenizers
from avrep.models.config import module_from_config
from avrep.models.mdvae import DSAE, MDVAE, NORMALIZATIONS, JointMVAE, jointmvae_loss, likelihood_kinds, mdvae_loss
from avrep.models.vqvae import LOG_EPS
from avrep.tasks.base import Task
from data_pipelines.spec import FEATURE_MODALITIES, PipelineSpec, feature_field

FAMILIES = {"mdvae": MDVAE, "dsae": DSAE, "jointmvae": JointMVAE}
FEATURES = ("vq", "raw")
SCALINGS = ("none", "standardize", "modality")
STATS = "feature_stats"  # variable collection of the per-dimension input statistics (features.scaling)


def raw_features(batch, audio_cfg) -> tuple[jax.Array, jax.Array]:
    """A window batch -> (log power [B, T, 513], pixels [B, T, H * W * 3] in [-0.5, 0.5])."""
    b, t = batch["video"].shape[:2]
    x_a = jnp.log(audio_frames_to_power(batch["audio"], audio_cfg) + LOG_EPS)
    return x_a.reshape(b, t, -1), video_to_model_range(batch["video"]).reshape(b, t, -1)


class SequenceVAETask(Task):
    def __init__(self, config):
        super().__init__(config)
        self.family = str(config["task"])
        features = config.get("features", {})
        self.feature_kind = str(features.get("kind", "vq"))
        if self.feature_kind not in FEATURES:
            raise ValueError(f"config key features.kind must be one of {FEATURES}, got {self.feature_kind!r}")
        self._module = module_from_config(
            FAMILIES[self.family], dict(config["model"]), f"{self.family} config (config key model)"
        )
        loss_cfg = config["loss"]
        self.normalization = str(loss_cfg["normalization"])
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"config key loss.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        self.kl_warmup_steps = int(loss_cfg["kl_warmup_steps"])
        self.likelihood = str(loss_cfg.get("likelihood", "unit"))
        try:
            likelihood_kinds(self.likelihood, self.inputs, self.normalization)
        except ValueError as e:
            raise ValueError(f"config key loss.{e}") from None
        self.alpha = float(loss_cfg.get("alpha", 1.0))  # JointMVAE's unimodal-KL weight
        # Loaded here, not inside a traced function: restoring a checkpoint needs concrete arrays.
        self.tokenizers = FrozenTokenizers(config) if self.feature_kind == "vq" else None
        self.cached = self.feature_kind == "vq" and bool(config["data"].get("feature_cache", True))
        self.scaling = str(features.get("scaling", "none"))
        if self.scaling not in SCALINGS:
            raise ValueError(f"config key features.scaling must be one of {SCALINGS}, got {self.scaling!r}")
        self._stats: dict[str, np.ndarray] | None = None  # set by training_source

    @property
    def display_name(self) -> str:
        """The paper's row names: VQ-MDVAE, MDVAE (raw), VQ-DSAE-audio, DSAE-visual, VQ-JointMVAE."""
        prefix = "VQ-" if self.feature_kind == "vq" else ""
        if self.family == "dsae":
            return f"{prefix}DSAE-{self._module.modality}"
        return prefix + {"mdvae": "MDVAE", "jointmvae": "JointMVAE"}[self.family]

    @property
    def module(self):
        return self._module

    @property
    def inputs(self) -> tuple[str, ...]:
        """The modalities the model reads: ("audio", "visual"), or a DSAE's one."""
        return (self._module.modality,) if self.family == "dsae" else ("audio", "visual")

    @property
    def dims(self) -> dict[str, int]:
        if self.family == "dsae":
            return {self._module.modality: self._module.dim_x}
        return {"audio": self._module.dim_audio, "visual": self._module.dim_visual}

    @property
    def pipeline(self) -> PipelineSpec:
        if self.cached:
            return self._pipeline_from_config("feature_windows", tuple(map(feature_field, FEATURE_MODALITIES)))
        return self._pipeline_from_config("windows", ("audio", "video"))

    def training_source(self, source, workdir: str):
        """VQ features with ``data.feature_cache``: the features of every training utterance, computed
        once by process 0 into ``feature_cache_dir`` (<data.feature_cache_dir or workdir/feature_cache>/<split>).
        With ``features.scaling: standardize``, also the per-dimension input statistics."""
        if self.cached:
            directory = feature_cache_dir(self.config, workdir, str(self.config["data"]["train_split"]))
            source = shared_feature_cache(
                directory, self.tokenizers, source, min_frames=self.pipeline.frames_per_example
            )
        if self.scaling != "none":
            self._stats = self._feature_stats(source)
        return source

    def _feature_stats(self, source, max_utterances: int = 256) -> dict[str, np.ndarray]:
        """Per-dimension mean and std of the inputs over (up to ``max_utterances``) training utterances; with
        ``features.scaling: modality`` the std is one number per modality, repeated over its dimensions."""
        idx = np.linspace(0, len(source) - 1, min(len(source), max_utterances)).astype(int)
        if isinstance(source, FeatureSource):
            frames = [tuple(r[feature_field(m)] for m in FEATURE_MODALITIES) for r in (source[i] for i in idx)]
        else:
            utts = (utterance_frames(source[i], self.config["audio"], f"{source.description}: record {i}") for i in idx)
            encoders = {m: jax.jit(f) for m, f in self.frame_encoders().items()}
            frames = [(f["audio"], f["visual"]) for f in iter_utterance_features(encoders, utts)]
        stats = {}
        for k, m in enumerate(("audio", "visual")):
            if m in self.inputs:
                x = np.concatenate([f[k] for f in frames]).astype(np.float64)
                std = x.std(0)
                if self.scaling == "modality":
                    std = np.full_like(std, np.sqrt(np.mean(std**2)))
                stats[f"{m}_mean"] = x.mean(0).astype(np.float32)
                stats[f"{m}_std"] = np.maximum(std, 1e-3 * std.mean() + 1e-8).astype(np.float32)
        return stats

    def scale(self, variables, x: dict[str, jax.Array], inverse: bool = False) -> dict[str, jax.Array]:
        """Standardised inputs (``features.scaling``), or back with ``inverse``; identity for "none"."""
        if self.scaling == "none":
            return x
        stats = variables[STATS]
        if inverse:
            return {m: v * stats[f"{m}_std"] + stats[f"{m}_mean"] if m in self.inputs else v for m, v in x.items()}
        return {m: (v - stats[f"{m}_mean"]) / stats[f"{m}_std"] if m in self.inputs else v for m, v in x.items()}

    @staticmethod
    def module_variables(variables) -> dict:
        """The variables the Flax module reads (without the input statistics)."""
        return {k: v for k, v in variables.items() if k != STATS}

    def dummy_batch(self) -> dict:
        if not self.cached:
            return super().dummy_batch()
        t = self.pipeline.frames_per_example
        return {feature_field(m): jnp.zeros((2, t, self.tokenizers.dims[m])) for m in FEATURE_MODALITIES}

    def features(self, batch) -> dict[str, jax.Array]:
        """{"audio": [B, T, ·], "visual": [B, T, ·]}: the model's input features of a batch."""
        if feature_field("audio") in batch:  # cached
            return {m: batch[feature_field(m)] for m in FEATURE_MODALITIES}
        if self.feature_kind == "vq":
            x_a, x_v = self.tokenizers.encode_batch(batch)
        else:
            x_a, x_v = raw_features(batch, self.config["audio"])
        return {"audio": x_a, "visual": x_v}

    def frame_encoders(self) -> dict:
        """Per-modality frame-wise input features (to jit): audio windows [N, n_fft] -> [N, ·], uint8
        frames [N, H, W, 3] -> [N, ·] (``iter_utterance_features``)."""
        if self.tokenizers is not None:
            return self.tokenizers.frame_encoders("features")
        return {
            "audio": lambda w: jnp.log(audio_frames_to_power(w, self.config["audio"]) + LOG_EPS),
            "visual": lambda v: video_to_model_range(v).reshape(v.shape[0], -1),
        }

    def decode_frames(self, x_audio: jax.Array, x_visual: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Model outputs [N, ·] (either may be None) -> (power [N, 513], images [N, H, W, 3] in [0, 1])."""
        if self.tokenizers is not None:
            power, images = self.tokenizers.decode(x_audio, x_visual)
        else:
            size = int(self.config["data"]["image_size"])
            power = None if x_audio is None else jnp.exp(x_audio)
            images = None if x_visual is None else x_visual.reshape(-1, size, size, 3)
        return power, None if images is None else jnp.clip(images + 0.5, 0.0, 1.0)

    def model_inputs(self, x: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        return tuple(x[m] for m in self.inputs)

    def init_variables(self, rng, batch):
        # Only the feature sizes matter for initialisation: no tokenizer needed.
        t = self.pipeline.frames_per_example
        x = {m: jnp.zeros((2, t, d)) for m, d in self.dims.items()}
        params_rng, sample_rng = jax.random.split(rng)
        variables = dict(self._module.init({"params": params_rng, "sample": sample_rng}, *self.model_inputs(x)))
        if self.scaling != "none":  # placeholders until training_source has measured them (restores overwrite)
            stats = self._stats or {
                f"{m}_{k}": np.full(d, 0.0 if k == "mean" else 1.0, np.float32)
                for m, d in self.dims.items()
                for k in ("mean", "std")
            }
            variables[STATS] = {k: jnp.asarray(v) for k, v in stats.items()}
        return variables

    def kl_weight(self, step: jax.Array) -> jax.Array:
        """beta: linear KL warm-up from 0 to 1 over ``loss.kl_warmup_steps`` (0: always 1)."""
        if self.kl_warmup_steps <= 0:
            return jnp.float32(1.0)
        return jnp.minimum(1.0, step.astype(jnp.float32) / self.kl_warmup_steps)

    def loss(self, params, model_state, batch, rng, step):
        x = self.scale(model_state, self.features(batch))
        compute_params, *inputs = self.computation(params, *self.model_inputs(x))
        out = self._module.apply(
            {"params": compute_params, **self.module_variables(model_state)}, *inputs, rngs={"sample": rng}
        )
        out = self.outputs_float32(out)
        beta = self.kl_weight(step)
        if self.family == "jointmvae":
            terms = jointmvae_loss(
                out, x, beta=beta, alpha=self.alpha, normalization=self.normalization, likelihood=self.likelihood
            )
        else:
            terms = mdvae_loss(out, x, beta=beta, normalization=self.normalization, likelihood=self.likelihood)
        loss = terms.pop("loss")
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x[m])) for m in self.inputs]))
        metrics = dict(terms, kl_weight=beta, features_finite=finite.astype(jnp.float32))
        return loss, (metrics, dict(model_state))

    def apply_fn(self, variables, *args, **kwargs):
        """Inference on (scaled, see ``scale``) feature sequences: posterior means (``sample=False``) unless told."""
        kwargs.setdefault("sample", False)
        return self._module.apply(self.module_variables(variables), *args, **kwargs)
