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
import numpy as np

from avrep import audio as audio_lib
from avrep.features.inputs import audio_frames_to_power
from avrep.models.dvae import PRESETS, SRNN, build_model, dvae_loss
from avrep.tasks.base import Task
from data_pipelines.sources import open_source
from data_pipelines.spec import PipelineSpec, speech_utterances

OUTPUT_LOG_VAR = ("gen_logvar", "gen_x_logvar")  # the decoders' output layer (its name in MixDVAE's SRNN)
BIAS_FLOOR = 1e-10  # the Itakura-Saito loss's eps: a silent bin starts at this variance


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
        """Waveform windows [B, samples] -> power spectrograms [B, T, F]; a batch that carries ``power``
        [B, T, F] already (spectrograms computed elsewhere, as the authors' data loader does) is used as is."""
        if "power" in batch:
            return batch["power"]
        b = batch["audio"].shape[0]
        return audio_frames_to_power(batch["audio"], self.config["audio"]).reshape(b, -1, self._module.x_dim)

    def init_variables(self, rng, batch):
        params_rng, sample_rng = jax.random.split(rng)
        x = self.features(batch)[:2]
        return dict(self._module.init({"params": params_rng, "sample": sample_rng}, x))

    def warm_start(self, variables):
        """A fresh run's decoder output (log-variance) bias set to the log of the mean power per bin of the
        first ``train.output_bias_utterances`` training utterances (0: left at zero, as the authors' code).
        With the raw power spanning ten decades, a zero bias (variance 1) leaves the decoder so far from the
        data that DKF, RVAE and DSAE collapse (KL -> 0) within a CPU budget; started at the data's mean
        spectrum they train (docs/RESULTS.md)."""
        n = int(self.config["train"].get("output_bias_utterances", 0))
        if n <= 0:
            return variables
        params = dict(variables["params"])
        names = [k for k in OUTPUT_LOG_VAR if k in params]
        if not names:
            raise ValueError(
                f"config key train.output_bias_utterances={n}: {self.display_name} has no {OUTPUT_LOG_VAR}"
            )
        d, a = self.config["data"], self.config["audio"]
        source = open_source(d["name"], d["train_split"], d["data_dir"] or None)
        total, frames = 0.0, 0
        for _, utt in zip(range(n), speech_utterances(source, int(a["hop"]))):
            x = audio_lib.power_spectrogram(
                utt["wav"],
                n_fft=int(a["n_fft"]),
                hop=int(a["hop"]),
                window=str(a["window"]),
                center=True,
                pad_mode=str(a["pad_mode"]),
            )
            total, frames = total + np.asarray(x, np.float64).sum(axis=0), frames + x.shape[0]
        bias = np.log(total / frames + BIAS_FLOOR).astype(np.float32)
        params[names[0]] = dict(params[names[0]], bias=jnp.asarray(bias))
        return dict(variables, params=params)

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
        compute_params, compute_x = self.computation(params, x)
        out = self.outputs_float32(
            self._module.apply({"params": compute_params}, compute_x, rngs={"sample": rng}, **kwargs)
        )
        beta = self.kl_weight(step)
        loss, metrics = dvae_loss(out, x, beta=beta)
        metrics = dict(metrics, kl_weight=beta, **({"use_pred": kwargs["use_pred"]} if kwargs else {}))
        return loss, (metrics, dict(model_state))

    def apply_fn(self, variables, *args, **kwargs):
        """Power spectrograms [B, T, F] -> the model's outputs (posterior means: ``sample=False`` unless told)."""
        kwargs.setdefault("sample", False)
        return self._module.apply(variables, *args, **kwargs)
