"""The small interface through which the one generic training loop serves every model family."""

from __future__ import annotations

import abc
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from avrep.nn import precision
from data_pipelines.spec import AudioFraming, PipelineSpec

Variables = dict[str, Any]
Metrics = dict[str, jax.Array]


class Task(abc.ABC):
    """A model family's training glue: its module, its input spec, its loss.

    ``variables`` are Flax collections: ``params`` is trained by the optimizer, every other
    collection (EMA codebook statistics, batch statistics) is ``model_state``, updated by the
    loss function itself and returned beside the metrics.
    """

    def __init__(self, config: Mapping):
        self.config = config
        self.compute_dtype  # noqa: B018 -- rejects a bad model.dtype when the task is built

    @property
    def compute_dtype(self):
        """The computation dtype (config key ``model.dtype``, default float32; see ``avrep.nn.precision``)."""
        return precision.compute_dtype(str(self.config["model"].get("dtype", "float32")))

    def computation(self, params, *inputs):
        """``params`` and floating ``inputs`` cast to the computation dtype, the start of a mixed-precision
        loss (parameters stay float32 in the train state; their gradients come back float32)."""
        return precision.cast_floating((params, *inputs), self.compute_dtype)

    @staticmethod
    def outputs_float32(outputs):
        """A model's floating outputs in float32 before the loss terms."""
        return precision.cast_floating(outputs, np.float32)

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The Flax module whose variables the checkpoint holds."""

    @property
    @abc.abstractmethod
    def pipeline(self) -> PipelineSpec:
        """What the input pipeline must deliver."""

    def _pipeline_from_config(self, kind: str, modalities: tuple[str, ...], **options) -> PipelineSpec:
        """A ``PipelineSpec`` whose batch shape comes from the config's ``data`` block (``options``: its other
        fields, e.g. ``labels``)."""
        d = self.config["data"]
        return PipelineSpec(
            kind=kind,
            examples_per_batch=int(d["examples_per_batch"]),
            frames_per_example=int(d["frames_per_example"]),
            modalities=modalities,
            **options,
        )

    @property
    def framing(self) -> AudioFraming:
        a = self.config["audio"]
        return AudioFraming(n_fft=int(a["n_fft"]), hop=int(a["hop"]), pad_mode=str(a["pad_mode"]))

    def training_source(self, source, workdir: str):
        """The random-access source the training pipeline reads; tasks may derive another (a feature cache)."""
        return source

    def epoch_size(self, source) -> tuple[int, int]:
        """(examples per epoch, examples per global batch) of the training ``source`` (``training_source``'s), for
        schedules stated in epochs (``avrep.training.epochs``): by default one example per utterance."""
        return len(source), self.pipeline.examples_per_batch

    def warm_start(self, variables: Variables) -> Variables:
        """Variables of a fresh run after initialisation (e.g. with pre-trained weights put in)."""
        return variables

    def optimizer(self, tx):
        """The optimizer the step uses, given the config's (``optax.GradientTransformation``); tasks may
        restrict it (e.g. a frozen encoder)."""
        return tx

    def dummy_batch(self) -> dict:
        """A zero batch with the pipeline's shapes (2 examples): for shape inference and restores."""
        spec, framing, n = self.pipeline, self.framing, 2
        frames = 1 if spec.kind == "frames" else spec.frames_per_example
        batch = {}
        if "audio" in spec.modalities:
            shape = (n, 1, framing.n_fft) if spec.kind == "frames" else (n, (frames - 1) * framing.hop + framing.n_fft)
            batch["audio"] = np.zeros(shape, np.float32)
        if "video" in spec.modalities:
            size = int(self.config["data"]["image_size"])
            batch["video"] = np.zeros((n, frames, size, size, 3), np.uint8)
        return batch

    @abc.abstractmethod
    def init_variables(self, rng: jax.Array, batch: Any) -> Variables:
        """Initial variables (all collections) for a global batch."""

    @abc.abstractmethod
    def loss(
        self, params: Any, model_state: Variables, batch: Any, rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, tuple[Metrics, Variables]]:
        """Training loss at optimizer step ``step``, its metrics and the updated non-trainable collections."""

    @property
    def display_name(self) -> str:
        """The model's name in tables and figures (the papers' row names where they have one)."""
        return str(self.config.get("name", self.config.get("task")))

    def apply_fn(self, variables: Variables, *args, **kwargs):
        """Inference entry point handed to users by ``avrep.load_checkpoint``."""
        return self.module.apply(variables, *args, train=False, **kwargs)
