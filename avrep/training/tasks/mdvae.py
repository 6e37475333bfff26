"""Training task for VQ-MDVAE stage 2 (spec/mdvae.md §3): MDVAE on frozen tokenizer features.

The pipeline delivers aligned windows of T frames (audio waveform + video). Inside the jitted
step the frozen tokenizers turn them into the MDVAE's inputs, the flattened pre-quantisation
encoder outputs in the authors' (PyTorch, channel-major) order:
audio [T, 513] power -> z_e [T, 64, 8] -> [T, 8 * 64 = 512];
video [T, 64, 64, 3] -> z_e [T, 8, 8, 32] -> [T, 32 * 8 * 8 = 2048].
Computing them on device avoids a feature cache on disk; the tokenizer variables are constants
of the compiled step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from avrep.models.config import module_from_config
from avrep.models.mdvae import MDVAE, NORMALIZATIONS, mdvae_loss
from avrep.training.tasks.base import Task
from avrep.training.tasks.vqvae import audio_frames_to_power, video_to_model_range
from data_pipelines.pipelines import PipelineSpec


def channel_major(z_e: jax.Array) -> jax.Array:
    """[N, *positions, C] channels-last latents -> [N, C * prod(positions)] in PyTorch's order."""
    return jnp.moveaxis(z_e, -1, 1).reshape(z_e.shape[0], -1)


class MDVAETask(Task):
    def __init__(self, config):
        super().__init__(config)
        self._module = module_from_config(MDVAE, dict(config["model"]), "mdvae config (config key model)")
        loss_cfg = config["loss"]
        self.normalization = str(loss_cfg["normalization"])
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"config key loss.normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}")
        self.kl_warmup_steps = int(loss_cfg["kl_warmup_steps"])
        # Loaded here, not inside a traced function: restoring a checkpoint needs concrete arrays.
        self.tokenizers = self._load_tokenizers()

    @property
    def module(self):
        return self._module

    @property
    def pipeline(self) -> PipelineSpec:
        return self._pipeline_from_config("windows", ("audio", "video"))

    def _load_tokenizers(self) -> dict:
        """The frozen audio and visual tokenizers (avrep.load_checkpoint) named by config.tokenizers."""
        from avrep.training.checkpointing import load_checkpoint  # tasks are imported by checkpointing

        loaded = {}
        for modality in ("audio", "visual"):
            path = str(self.config["tokenizers"][modality])
            if not path:
                raise ValueError(f"config key tokenizers.{modality} is empty: expected the run directory of a "
                                 f"trained {modality} VQ-VAE (e.g. W/vqvae_{modality})")
            model = load_checkpoint(path)
            if model.config.get("task") != "vqvae" or model.config.model.modality != modality:
                raise ValueError(f"config key tokenizers.{modality}={path} is a "
                                 f"{model.config.get('task')}/{model.config.model.get('modality')} run; "
                                 f"expected a {modality} VQ-VAE")
            loaded[modality] = model
        return loaded

    def features(self, batch) -> tuple[jax.Array, jax.Array]:
        """(x_audio [B, T, 512], x_visual [B, T, 2048]): frozen pre-quantisation features."""
        audio, visual = self.tokenizers["audio"], self.tokenizers["visual"]
        b, t = batch["video"].shape[:2]
        power = audio_frames_to_power(batch["audio"], self.config["audio"])  # [B*T, 513]
        z_a = audio.module.apply(audio.variables, power, method="encode")
        z_v = visual.module.apply(visual.variables, video_to_model_range(batch["video"]), method="encode")
        x_audio = jax.lax.stop_gradient(channel_major(z_a)).reshape(b, t, -1)
        x_visual = jax.lax.stop_gradient(channel_major(z_v)).reshape(b, t, -1)
        return x_audio, x_visual

    def init_variables(self, rng, batch):
        # Only the feature sizes matter for initialisation: no tokenizer needed.
        t = self.pipeline.frames_per_example
        x_audio = jnp.zeros((2, t, self._module.dim_audio))
        x_visual = jnp.zeros((2, t, self._module.dim_visual))
        params_rng, sample_rng = jax.random.split(rng)
        return dict(self._module.init({"params": params_rng, "sample": sample_rng}, x_audio, x_visual))

    def kl_weight(self, step: jax.Array) -> jax.Array:
        """beta: linear KL warm-up from 0 to 1 over ``loss.kl_warmup_steps`` (0: always 1)."""
        if self.kl_warmup_steps <= 0:
            return jnp.float32(1.0)
        return jnp.minimum(1.0, step.astype(jnp.float32) / self.kl_warmup_steps)

    def loss(self, params, model_state, batch, rng, step):
        x_audio, x_visual = self.features(batch)
        out = self._module.apply({"params": params, **model_state}, x_audio, x_visual, rngs={"sample": rng})
        beta = self.kl_weight(step)
        terms = mdvae_loss(out, {"audio": x_audio, "visual": x_visual}, beta=beta,
                           normalization=self.normalization)
        loss = terms.pop("loss")
        finite = jnp.all(jnp.isfinite(x_audio)) & jnp.all(jnp.isfinite(x_visual))
        metrics = dict(terms, kl_weight=beta, features_finite=finite.astype(jnp.float32))
        return loss, (metrics, dict(model_state))

    def apply_fn(self, variables, *args, **kwargs):
        """MDVAE inference on feature sequences: posterior means (``sample=False``) unless told."""
        kwargs.setdefault("sample", False)
        return self._module.apply(variables, *args, **kwargs)
