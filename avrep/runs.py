"""Run directories on disk, read with Orbax alone: what a trained run is, independent of how it was trained.

Layout of ``<run>/checkpoints/<step>/``:
  variables/  plain nested dict of Flax collections ({"params": ..., "vq_ema": ...}): loadable with Orbax
              alone, without avrep
  config/     the run's config as JSON
  train/      {"step", "opt_state"}        (runs trained by avrep.training; absent from imported runs)
  data_iter/  the Grain iterator state     (likewise)

A path names a run in three ways: the run directory, its ``checkpoints/`` directory or one step directory.
Configs written before the one-schema layout (loss options under ``model``, test hooks under ``train``) are
read in today's form (``upgrade_config``), so old checkpoints keep loading.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"  # written by avrep.training.logging
# Keys that moved between config blocks: (old block or "" for the top level, old key, new block, new key).
MOVED_CONFIG_KEYS = (
    ("model", "recon_loss", "loss", "recon_loss"),
    ("model", "ssim_weight", "loss", "ssim_weight"),
    ("train", "log_batch_digest", "debug", "log_batch_digest"),
    ("train", "simulate_preemption_at_step", "debug", "simulate_preemption_at_step"),
    ("", "feature_scaling", "features", "scaling"),
    ("", "pretrained", "finetune", "pretrained"),
)


def _step_dirs(directory: str) -> list[int]:
    return sorted(
        int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d, "variables"))
    )


def resolve_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoints directory, latest finished step) of a run workdir, its checkpoints/ directory or one step
    directory (that step)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"checkpoint path {path} does not exist (expected a run workdir, "
            f"its '{CHECKPOINT_SUBDIR}/' directory or a step directory)"
        )
    if os.path.isdir(os.path.join(path, "variables")) and os.path.basename(path).isdigit():
        return os.path.dirname(path), int(os.path.basename(path))
    directory = path if os.path.basename(path) == CHECKPOINT_SUBDIR else os.path.join(path, CHECKPOINT_SUBDIR)
    steps = _step_dirs(directory) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(
            f"no finished checkpoint under {directory} (expected step directories containing 'variables/')"
        )
    return directory, steps[-1]


def checkpoint_steps(path: str) -> list[int]:
    """The finished checkpoint steps of a run (``path`` as for ``resolve_checkpoint``)."""
    directory, _ = resolve_checkpoint(path)
    return _step_dirs(directory)


def validation_history(workdir: str) -> list[tuple[int, float]]:
    """[(step, validation loss)] logged by training with a validation split (metrics.jsonl), in order."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if '"validation/loss"' in line]
    history = {}
    for row in rows:  # a resumed run logs a step again: the last value counts
        history[int(row["step"])] = float(row["validation/loss"])
    return sorted(history.items())


def best_step(path: str) -> int:
    """The kept checkpoint with the lowest validation loss, the earliest of equals (the latest checkpoint if the
    run logged none)."""
    directory, latest = resolve_checkpoint(path)
    losses = dict(validation_history(os.path.dirname(directory)))
    kept = [s for s in _step_dirs(directory) if s in losses]
    return min(kept, key=lambda s: (losses[s], s)) if kept else latest


def _manager(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))


def upgrade_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config in today's schema: keys written by older avrep versions moved to their present blocks."""
    config = ml_collections.ConfigDict(config)
    with config.unlocked():
        if isinstance(config.get("features"), str):  # was the input kind alone
            kind = config.features
            del config["features"]
            config.features = ml_collections.ConfigDict(dict(kind=kind))
        for old, key, new, new_key in MOVED_CONFIG_KEYS:
            block = config[old] if old else config
            if old and old not in config or key not in block:
                continue
            value = block[key]
            del block[key]
            if new not in config:
                config[new] = ml_collections.ConfigDict()
            if new_key not in config[new]:
                config[new][new_key] = value
    return config


def read_config(path: str) -> ml_collections.ConfigDict:
    """The config of a run (``path`` as for ``resolve_checkpoint``), in today's schema."""
    directory, step = resolve_checkpoint(path)
    restored = _manager(directory).restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return upgrade_config(ml_collections.ConfigDict(restored["config"]))


def restore_variables(path: str, abstract: Any, step: int | None = None) -> Any:
    """The variables of a run's checkpoint (the latest unless ``step``), restored onto ``abstract``'s shapes,
    dtypes and shardings (``jax.ShapeDtypeStruct`` leaves; without shardings: the first device)."""
    directory, latest = resolve_checkpoint(path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: (
            a if getattr(a, "sharding", None) is not None else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device)
        ),
        abstract,
    )
    restored = _manager(directory).restore(
        latest if step is None else step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract))
    )
    return restored["variables"]


def write_run(workdir: str, config: ml_collections.ConfigDict, variables: Any, step: int = 0) -> str:
    """Writes ``variables`` and ``config`` as checkpoint ``step`` of a run in ``workdir`` (e.g. weights imported
    from another framework, or random weights for a benchmark); returns the run directory."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True)) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables), config=ocp.args.JsonSave(config.to_dict())
            ),
        )
        manager.wait_until_finished()
    return os.path.abspath(workdir)
