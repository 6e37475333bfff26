"""Training task for the audio and visual VQ-VAE tokenizers (frame-wise, random single frames)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from avrep import audio as audio_lib
from avrep.models.vqvae import build_vqvae
from avrep.nn.losses import itakura_saito_from_log, mse
from avrep.training.tasks.base import Task
from data_pipelines.pipelines import PipelineSpec


def audio_frames_to_power(windows: jax.Array, audio_cfg) -> jax.Array:
    """[..., n_fft] waveform windows -> [prod(...), bins] linear power spectrum frames."""
    power = audio_lib.power_spectrogram(windows, n_fft=int(audio_cfg["n_fft"]), hop=int(audio_cfg["hop"]),
                                        window=str(audio_cfg["window"]), center=False)
    return power.reshape(-1, power.shape[-1])


def video_to_model_range(video: jax.Array) -> jax.Array:
    """uint8 [..., H, W, 3] -> float32 [N, H, W, 3] in [-0.5, 0.5] (the papers' Normalize(0.5, 1))."""
    x = video.astype(jnp.float32) / 255.0 - 0.5
    return x.reshape(-1, *x.shape[-3:])


class VQVAETask(Task):
    def __init__(self, config):
        super().__init__(config)
        self.modality = str(config["model"]["modality"])
        if self.modality not in ("audio", "visual"):
            raise ValueError(f"config key model.modality must be 'audio' or 'visual', got {self.modality!r}")
        model_cfg = dict(config["model"])
        self.recon_loss = str(model_cfg.pop("recon_loss", "itakura_saito" if self.modality == "audio" else "mse"))
        if self.recon_loss not in ("itakura_saito", "mse"):
            raise ValueError(f"config key model.recon_loss must be 'itakura_saito' or 'mse', got {self.recon_loss!r}")
        self._module = build_vqvae(model_cfg)

    @property
    def module(self):
        return self._module

    @property
    def pipeline(self) -> PipelineSpec:
        d = self.config["data"]
        return PipelineSpec(kind="frames", examples_per_batch=int(d["examples_per_batch"]),
                            frames_per_example=int(d["frames_per_example"]),
                            modalities=("audio",) if self.modality == "audio" else ("video",))

    def features(self, batch) -> jax.Array:
        """Model inputs from a pipeline batch: power frames (audio) or normalised images."""
        if self.modality == "audio":
            return audio_frames_to_power(batch["audio"], self.config["audio"])
        return video_to_model_range(batch["video"])

    def init_variables(self, rng, batch):
        return dict(self._module.init({"params": rng}, self.features(batch)[:2], train=False))

    def loss(self, params, model_state, batch, rng):
        x = self.features(batch)
        out, new_state = self._module.apply({"params": params, **model_state}, x, train=True,
                                            mutable=list(model_state), rngs={"vq": rng})
        if self.recon_loss == "itakura_saito":
            recon = itakura_saito_from_log(x, out["log_recon"])
        else:
            recon = mse(x, out["recon"])
        loss = recon + out["commitment_loss"]
        metrics = {"recon_loss": recon, "commitment_loss": out["commitment_loss"],
                   "perplexity": out["perplexity"], "codebook_usage": out["usage"]}
        return loss, (metrics, dict(new_state))
