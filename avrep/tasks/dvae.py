"""Training task for the dynamical VAEs of speech: VAE, DKF, STORN, VRNN, SRNN, RVAE, DSAE ([Lin-thesis],
[DVAE-review]; keys: docs/REFERENCES.md).

Inputs: random windows of ``data.frames_per_example`` STFT frames of speech (pipeline kind
``speech_windows``), turned into power spectrograms [B, T, F] on the device (``audio``: 16 kHz, 1024-sample
sine window, hop 256, 513 bins, centre padding). Loss: ``avrep.models.dvae.dvae_loss`` (Itakura–Saito + beta
· KL per frame), with a linear KL warm-up (``loss.kl_warmup_steps`` after ``loss.kl_warmup_delay`` steps;
the authors' code: 0 for 10 epochs, then +0.2 every 10 epochs) and, for an SRNN built with
``scheduled_sampling``, the probability of feeding back its own predictions rising linearly from 0 at
``loss.ss_start`` to ``loss.ss_max`` at ``loss.ss_end`` steps (the MixDVAE / DVAE_SE recipe, in steps instead
of epochs).

``model``: ``{"preset": "dvae_se/SRNN"}`` (a key of ``avrep.models.dvae.PRESETS``, optionally with fields
that override it) or ``{"model": "SRNN", **fields}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avrep.features.inputs import audio_frames_to_power
from avrep.models.dvae import PRESETS, SRNN, build_model, dvae_loss
from avrep.tasks.base import Task
from data_pipelines.spec import PipelineSpec


def model_fields(model_cfg) -> dict:
    """``{"model": class name, **fields}`` from a config's ``model`` block (a preset and its overrides)."""
    fields = dict(model_cfg)
    preset = fields.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"config key model.preset={preset!r}: expected one of {sorted(PRESETS)}")
        fields = {**PRESETS[preset], **fields}
    return fields


class DVAETask(Task):
    def __init__(self, config):
        super().__init__(config)
        self._module = build_model(model_fields(config["model"]))
        bins = int(config["audio"]["n_fft"]) // 2 + 1
        if self._module.x_dim != bins:
            raise ValueError(
                f"config key model: x_dim={self._module.x_dim} but audio.n_fft={config['audio']['n_fft']} gives "
                f"{bins} bins"
            )
        loss = config["loss"]
        self.beta = float(loss.get("beta", 1.0))
        self.kl_warmup_steps = int(loss.get("kl_warmup_steps", 0))
        self.kl_warmup_delay = int(loss.get("kl_warmup_delay", 0))
        self.ss = tuple(float(loss.get(k, d)) for k, d in (("ss_start", 0), ("ss_end", 0), ("ss_max", 1.0)))
        self.scheduled = isinstance(self._module, SRNN) and self._module.scheduled_sampling
        if self.scheduled and not self.ss[1] > self.ss[0] >= 0:
            raise ValueError(
                f"config keys loss.ss_start / ss_end = {self.ss[:2]}: a scheduled-sampling SRNN needs 0 <= "
                f"ss_start < ss_end (steps)"
            )

    @property
    def module(self):
        return self._module

    @property
    def display_name(self) -> str:
        name = type(self._module).__name__
        if name == "RVAE":
            return "RVAE-Causal" if self._module.causal else "RVAE-NonCausal"
        if name == "SRNN":  # as [Lin-thesis] Table 7.1: scheduled sampling or teacher forcing
            return "SRNN (SS)" if self.scheduled else "SRNN (TF)"
        return name

    @property
    def pipeline(self) -> PipelineSpec:
        return self._pipeline_from_config("speech_windows", ("audio",))

    def features(self, batch) -> jax.Array:
        """Waveform windows [B, samples] -> power spectrograms [B, T, F]."""
        b = batch["audio"].shape[0]
        return audio_frames_to_power(batch["audio"], self.config["audio"]).reshape(b, -1, self._module.x_dim)

    def init_variables(self, rng, batch):
        params_rng, sample_rng = jax.random.split(rng)
        x = self.features(batch)[:2]
        return dict(self._module.init({"params": params_rng, "sample": sample_rng}, x))

    def kl_weight(self, step: jax.Array) -> jax.Array:
        """beta times a linear warm-up from 0 over ``kl_warmup_steps`` after ``kl_warmup_delay`` steps."""
        if self.kl_warmup_steps <= 0:
            return jnp.float32(self.beta)
        ramp = (step.astype(jnp.float32) - self.kl_warmup_delay) / self.kl_warmup_steps
        return self.beta * jnp.clip(ramp, 0.0, 1.0)

    def use_pred(self, step: jax.Array) -> jax.Array:
        """Scheduled sampling: probability of feeding back the model's prediction at each frame."""
        start, end, top = self.ss
        return top * jnp.clip((step.astype(jnp.float32) - start) / (end - start), 0.0, 1.0)

    def loss(self, params, model_state, batch, rng, step):
        x = self.features(batch)
        kwargs = {"use_pred": self.use_pred(step)} if self.scheduled else {}
        out = self._module.apply({"params": params}, x, rngs={"sample": rng}, **kwargs)
        beta = self.kl_weight(step)
        loss, metrics = dvae_loss(out, x, beta=beta)
        metrics = dict(metrics, kl_weight=beta, **({"use_pred": kwargs["use_pred"]} if kwargs else {}))
        return loss, (metrics, dict(model_state))

    def apply_fn(self, variables, *args, **kwargs):
        """Power spectrograms [B, T, F] -> the model's outputs (posterior means: ``sample=False`` unless told)."""
        kwargs.setdefault("sample", False)
        return self._module.apply(variables, *args, **kwargs)
