"""Training task for the audio and visual VQ-VAE tokenizers (frame-wise, random single frames)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avrep.features.inputs import audio_frames_to_power, video_to_model_range
from avrep.models.vqvae import build_vqvae
from avrep.nn.losses import itakura_saito_from_log, mse, ssim
from avrep.tasks.base import Task
from data_pipelines.spec import PipelineSpec, decode_utterance

# Utterances read to count a training split's frames (evenly spaced; all of them in a smaller split).
EPOCH_SIZE_SAMPLE = 512


def augment_images(x: jax.Array, rng: jax.Array, hflip: bool, color_jitter: float) -> jax.Array:
    """Training-time augmentation of [N, H, W, 3] images in [-0.5, 0.5].

    Horizontal flips (p = 0.5) and a per-image, per-channel gain exp(N(0, color_jitter)): the
    tokenizer is judged on unseen speakers, whose skin, hair and background colours it has not seen.
    """
    flip_key, gain_key = jax.random.split(rng)
    if hflip:
        flip = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1], x)
    if color_jitter > 0:
        gain = jnp.exp(color_jitter * jax.random.normal(gain_key, (x.shape[0], 1, 1, x.shape[-1])))
        x = jnp.clip((x + 0.5) * gain, 0.0, 1.0) - 0.5
    return x


class VQVAETask(Task):
    def __init__(self, config):
        super().__init__(config)
        self.modality = str(config["model"]["modality"])
        if self.modality not in ("audio", "visual"):
            raise ValueError(f"config key model.modality must be 'audio' or 'visual', got {self.modality!r}")
        loss = config.get("loss", {})
        self.recon_loss = str(loss.get("recon_loss", "itakura_saito" if self.modality == "audio" else "mse"))
        # "smooth_l1": the VQ-MAE-AV code's visual objective (PyTorch's smooth L1, beta 1; the thesis says MSE).
        if self.recon_loss not in ("itakura_saito", "mse", "smooth_l1"):
            raise ValueError(
                f"config key loss.recon_loss must be 'itakura_saito', 'mse' or 'smooth_l1', got {self.recon_loss!r}"
            )
        if self.recon_loss == "smooth_l1" and self.modality != "visual":
            raise ValueError("config key loss.recon_loss='smooth_l1' is a visual objective; audio uses 'itakura_saito'")
        # Our option (the papers: MSE alone): + ssim_weight * (1 - SSIM), SSIM as the evaluation computes it.
        self.ssim_weight = float(loss.get("ssim_weight", 0.0))
        if self.ssim_weight < 0 or (self.ssim_weight > 0 and self.modality != "visual"):
            raise ValueError(f"config key loss.ssim_weight must be >= 0, and 0 for audio, got {self.ssim_weight}")
        self._module = build_vqvae(config["model"])

    @property
    def display_name(self) -> str:
        """VQ-VAE-audio / VQ-VAE-visual for the default run names, else the run's name."""
        name = str(self.config.get("name", "vqvae"))
        return f"VQ-VAE-{self.modality}" if name == f"vqvae_{self.modality}" else name

    @property
    def module(self):
        return self._module

    @property
    def pipeline(self) -> PipelineSpec:
        return self._pipeline_from_config("frames", ("audio",) if self.modality == "audio" else ("video",))

    def epoch_size(self, source) -> tuple[int, int]:
        """An epoch is every aligned frame of the training utterances (the authors train their tokenizers on
        frames), counted on up to ``EPOCH_SIZE_SAMPLE`` evenly spaced utterances and scaled to the split; a batch
        holds ``examples_per_batch`` x ``frames_per_example`` frames."""
        n = len(source)
        indices = np.unique(np.linspace(0, n - 1, min(n, EPOCH_SIZE_SAMPLE)).astype(int))
        hop = int(self.config["audio"]["hop"])
        frames = sum(
            decode_utterance(source[int(i)], hop, f"{source.description}: record {i}")["num_frames"] for i in indices
        )
        spec = self.pipeline
        return round(frames * n / len(indices)), spec.examples_per_batch * spec.frames_per_example

    def features(self, batch) -> jax.Array:
        """Model inputs from a pipeline batch: power frames (audio) or normalised images."""
        if self.modality == "audio":
            return audio_frames_to_power(batch["audio"], self.config["audio"])
        return video_to_model_range(batch["video"])

    def init_variables(self, rng, batch):
        return dict(self._module.init({"params": rng}, self.features(batch)[:2], train=False))

    def loss(self, params, model_state, batch, rng, step):
        x = self.features(batch)
        augment_rng, vq_rng = jax.random.split(rng)
        if self.modality == "visual":
            aug = self.config["data"].get("augment", {})
            x = augment_images(x, augment_rng, bool(aug.get("hflip", False)), float(aug.get("color_jitter", 0.0)))
        compute_params, compute_x = self.computation(params, x)
        out, new_state = self._module.apply(
            {"params": compute_params, **model_state},
            compute_x,
            train=True,
            mutable=list(model_state),
            rngs={"vq": vq_rng},
        )
        out = self.outputs_float32(out)
        if self.recon_loss == "itakura_saito":
            recon = itakura_saito_from_log(x, out["log_recon"])
        elif self.recon_loss == "smooth_l1":
            recon = jnp.mean(optax.huber_loss(out["recon"], x, delta=1.0))  # = smooth L1 with beta 1
        else:
            recon = mse(x, out["recon"])
        loss = recon + out["commitment_loss"]
        metrics = {
            "recon_loss": recon,
            "commitment_loss": out["commitment_loss"],
            "perplexity": out["perplexity"],
            "codebook_usage": out["usage"],
        }
        if self.ssim_weight > 0:  # images in [-0.5, 0.5]; SSIM's luminance term wants [0, 1]
            similarity = jnp.mean(ssim(x + 0.5, out["recon"] + 0.5))
            loss = loss + self.ssim_weight * (1.0 - similarity)
            metrics["ssim"] = similarity
        return loss, (metrics, dict(new_state))
