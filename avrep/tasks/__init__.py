"""Model families as tasks: the contract that training and evaluation share (``Task``), the registry
(config key ``task`` -> Task class) and ``load_checkpoint``, which gives a trained run's model with its task."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import ml_collections

from avrep import runs
from avrep.tasks.base import Task
from avrep.tasks.dvae import DVAETask
from avrep.tasks.mdvae import FAMILIES, SequenceVAETask
from avrep.tasks.source_filter import SourceFilterTask
from avrep.tasks.vqmae import VQMAEFinetuneTask, VQMAEPretrainTask
from avrep.tasks.vqvae import VQVAETask

TASKS: dict[str, type[Task]] = {
    "vqvae": VQVAETask,
    **{family: SequenceVAETask for family in FAMILIES},
    "vqmae": VQMAEPretrainTask,
    "vqmae_finetune": VQMAEFinetuneTask,
    "dvae": DVAETask,
    "source_filter": SourceFilterTask,
}


def build_task(config) -> Task:
    name = config.get("task")
    if name not in TASKS:
        raise ValueError(f"config key task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](config)


class LoadedModel(NamedTuple):
    config: ml_collections.ConfigDict
    variables: dict
    apply_fn: Any  # apply_fn(variables, *inputs, **kwargs): the module's inference call (train=False)
    module: Any
    step: int
    task: Task  # the family's contract: input features, decoding, the loss


def load_checkpoint(path: str) -> LoadedModel:
    """Loads a trained model for use from any Flax code.

    ``path``: a run directory, its ``checkpoints/`` directory or one step directory. Returns ``(config,
    variables, apply_fn, module, step, task)``; ``apply_fn(variables, x)`` runs the model in inference mode,
    and ``module`` exposes its other methods (e.g. ``module.apply(variables, x, method="encode")``).
    """
    directory, step = runs.resolve_checkpoint(path)
    config = runs.read_config(os.path.join(directory, str(step)))
    task = build_task(config)
    abstract = jax.eval_shape(task.init_variables, jax.random.key(0), task.dummy_batch())
    variables = runs.restore_variables(os.path.join(directory, str(step)), abstract)
    return LoadedModel(config, variables, task.apply_fn, task.module, step, task)
