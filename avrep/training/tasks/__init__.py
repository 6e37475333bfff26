"""Task registry: config.task -> Task class."""
from __future__ import annotations

from avrep.training.tasks.base import Task
from avrep.training.tasks.mdvae import FAMILIES, SequenceVAETask
from avrep.training.tasks.vqmae import VQMAEFinetuneTask, VQMAEPretrainTask
from avrep.training.tasks.vqvae import VQVAETask

TASKS: dict[str, type[Task]] = {"vqvae": VQVAETask, **{family: SequenceVAETask for family in FAMILIES},
                                "vqmae": VQMAEPretrainTask, "vqmae_finetune": VQMAEFinetuneTask}


def build_task(config) -> Task:
    name = config.get("task")
    if name not in TASKS:
        raise ValueError(f"config key task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](config)
