"""Orbax checkpoints: variables, optimizer state, step, the Grain iterator state and the config.

Layout of ``<workdir>/checkpoints/<step>/``:
  variables/  plain nested dict of Flax collections ({"params": ..., "vq_ema": ...}): loadable
              with Orbax alone, without avrep's training code
  train/      {"step", "opt_state"}
  data_iter/  the Grain iterator state (one JSON per process)
  config/     the run's config as JSON

``load_checkpoint(path)`` is the entry point for research code that wants a trained model.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` so a later move to Orbax V1 stays local."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, variables: Any, opt_state: Any, data_iter: grain.DatasetIterator,
             config: ml_collections.ConfigDict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave(variables),
            train=ocp.args.StandardSave({"step": step, "opt_state": opt_state}),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config.to_dict()),
        ))

    def restore(self, step: int, abstract_variables: Any, abstract_opt_state: Any,
                data_iter: grain.DatasetIterator) -> tuple[Any, Any]:
        """Restores variables and optimizer state onto their target shardings, and the iterator in place."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract_variables),
            train=ocp.args.StandardRestore({"step": 0, "opt_state": abstract_opt_state}),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        ))
        return restored["variables"], restored["train"]["opt_state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _step_dirs(directory: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()
                  and os.path.isdir(os.path.join(directory, d, "variables")))


def resolve_checkpoint(path: str) -> tuple[str, int]:
    """Accepts a run workdir, its checkpoints/ directory or one step directory."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist (expected a run workdir, "
                                f"its '{CHECKPOINT_SUBDIR}/' directory or a step directory)")
    if os.path.isdir(os.path.join(path, "variables")) and os.path.basename(path).isdigit():
        return os.path.dirname(path), int(os.path.basename(path))
    directory = path if os.path.basename(path) == CHECKPOINT_SUBDIR else os.path.join(path, CHECKPOINT_SUBDIR)
    steps = _step_dirs(directory) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"no finished checkpoint under {directory} (expected step directories "
                                f"containing 'variables/')")
    return directory, steps[-1]


def checkpoint_steps(path: str) -> list[int]:
    """The finished checkpoint steps of a run (``path`` as for ``resolve_checkpoint``)."""
    directory, _ = resolve_checkpoint(path)
    return _step_dirs(directory)


def read_config(path: str) -> ml_collections.ConfigDict:
    directory, step = resolve_checkpoint(path)
    restored = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)).restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored["config"])


class LoadedModel(NamedTuple):
    config: ml_collections.ConfigDict
    variables: dict
    apply_fn: Any  # apply_fn(variables, *inputs, **kwargs): the module's inference call (train=False)
    module: Any
    step: int


def load_checkpoint(path: str) -> LoadedModel:
    """Loads a trained model for use from any Flax code.

    Returns ``(config, variables, apply_fn, module, step)``; ``apply_fn(variables, x)`` runs
    the model in inference mode, and ``module`` exposes its other methods (e.g.
    ``module.apply(variables, x, method="encode")``).
    """
    from avrep.training.tasks import build_task  # tasks import models; keep this module light

    directory, step = resolve_checkpoint(path)
    config = read_config(os.path.join(directory, str(step)))
    task = build_task(config)
    abstract = jax.eval_shape(task.init_variables, jax.random.key(0), task.dummy_batch())
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    restored = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)).restore(
        step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract)))
    return LoadedModel(config, restored["variables"], task.apply_fn, task.module, step)
