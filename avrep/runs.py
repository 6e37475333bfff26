"""Run directories on disk, read with Orbax alone: what a trained run is, independent of how it was trained.

Layout of ``<run>/checkpoints/<step>/``:
  variables/  plain nested dict of Flax collections ({"params": ..., "vq_ema": ...}): loadable with Orbax
              alone, without avrep
  config/     the run's config as JSON
  train/      {"step", "opt_state"}        (runs trained by avrep.training; absent from imported runs)
  data_iter/  the Grain iterator state     (likewise)
  checksums.json  sha256 of every other file, written after the save commits (``write_checksums``) and checked
              before anything is read (``verify_checkpoint``): a flipped byte in an array file is otherwise
              restored without a word

A path names a run in three ways: the run directory, its ``checkpoints/`` directory or one step directory.
Configs written before the one-schema layout (loss options under ``model``, test hooks under ``train``) are
read in today's form (``upgrade_config``), so old checkpoints keep loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"  # written by avrep.training.logging
CHECKSUM_FILE = "checksums.json"
# Keys that moved between config blocks: (old block or "" for the top level, old key, new block, new key).
MOVED_CONFIG_KEYS = (
    ("model", "recon_loss", "loss", "recon_loss"),
    ("model", "ssim_weight", "loss", "ssim_weight"),
    ("train", "log_batch_digest", "debug", "log_batch_digest"),
    ("train", "simulate_preemption_at_step", "debug", "simulate_preemption_at_step"),
    ("", "feature_scaling", "features", "scaling"),
    ("", "pretrained", "finetune", "pretrained"),
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted: the message names the step directory, the file and why."""


def _file_digests(step_dir: str) -> dict[str, str]:
    digests = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, step_dir)
            if relative.startswith(CHECKSUM_FILE):  # itself, and its temporary file
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digests[relative] = h.hexdigest()
    return dict(sorted(digests.items()))


def write_checksums(step_dir: str) -> None:
    """Records the sha256 of every file of a committed step directory (atomically: a reader sees all or none)."""
    tmp = os.path.join(step_dir, CHECKSUM_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"algorithm": "sha256", "files": _file_digests(step_dir)}, f, indent=0)
    os.replace(tmp, os.path.join(step_dir, CHECKSUM_FILE))


_VERIFIED: dict[tuple, bool] = {}  # every file's (name, size, mtime) -> verified: hash an unchanged checkpoint once


def _stat_key(step_dir: str) -> tuple:
    return (step_dir,) + tuple(
        sorted(
            (os.path.join(root, n), st.st_size, st.st_mtime_ns)
            for root, _, files in os.walk(step_dir)
            for n in files
            for st in [os.stat(os.path.join(root, n))]
        )
    )


def verify_checkpoint(directory: str, step: int) -> bool:
    """Checks step ``step`` of a checkpoints directory against its checksum file. True: every file matches; False:
    the step has no checksum file (written by an older avrep, or killed between commit and checksum); raises
    ``CheckpointError`` naming the step and the file on a missing, changed or unreadable file."""
    step_dir = os.path.join(directory, str(step))
    path = os.path.join(step_dir, CHECKSUM_FILE)
    if not os.path.exists(path):
        return False
    key = _stat_key(step_dir)
    if key in _VERIFIED:
        return True
    try:
        with open(path) as f:
            expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint step {step} ({step_dir}): {CHECKSUM_FILE} is unreadable ({e})") from e
    actual = _file_digests(step_dir)
    for name, digest in expected.items():
        if name not in actual:
            raise CheckpointError(f"checkpoint step {step} ({step_dir}): file {name} is missing")
        if actual[name] != digest:
            raise CheckpointError(f"checkpoint step {step} ({step_dir}): file {name} does not match its checksum")
    _VERIFIED[key] = True
    return True


def content_digest(path: str, step: int | None = None, items: tuple[str, ...] = ("variables", "config")) -> str:
    """A digest of the files of ``items`` in a run's checkpoint (the latest unless ``step``): it changes whenever
    the weights or config are rewritten, even in the same directory at the same step."""
    directory, latest = resolve_checkpoint(path)
    step = latest if step is None else step
    step_dir = os.path.join(directory, str(step))
    if verify_checkpoint(directory, step):
        with open(os.path.join(step_dir, CHECKSUM_FILE)) as f:
            files = json.load(f)["files"]
    else:
        files = _file_digests(step_dir)
    chosen = {name: digest for name, digest in files.items() if name.split(os.sep)[0] in items}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def quarantine_checkpoint(directory: str, step: int) -> str:
    """Moves an unusable step directory aside (kept for inspection; neither Orbax nor avrep reads it again)."""
    target = os.path.join(directory, f"corrupt.{step}.{int(time.time())}")
    os.replace(os.path.join(directory, str(step)), target)
    return target


@contextlib.contextmanager
def quiet_orbax():
    """Orbax and absl log every file operation and each read-only open as warnings: silenced for the call only,
    so a user's own logging settings stand."""
    from absl import logging as absl_logging

    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "orbax.checkpoint")]
    levels = [lg.level for lg in loggers]
    absl_level = absl_logging.get_verbosity()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        absl_logging.set_verbosity(absl_level)


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
    restored = _restore(directory, step, "config", ocp.args.JsonRestore())
    return upgrade_config(ml_collections.ConfigDict(restored))


def _restore(directory: str, step: int, item: str, args) -> Any:
    """One item of a verified step, with a read error named by step and item instead of Orbax's traceback."""
    verify_checkpoint(directory, step)
    try:
        with quiet_orbax():
            return _manager(directory).restore(step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception as e:  # Orbax / TensorStore / JSON errors of a damaged file have no common type
        cause = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint step {step} ({os.path.join(directory, str(step))}): cannot read {item}/ "
            f"({type(e).__name__}: {cause[:300]})"
        ) from e


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
    return _restore(directory, latest if step is None else step, "variables", ocp.args.StandardRestore(abstract))


def read_variables(path: str) -> Any:
    """The variables of a run's checkpoint (``path`` as for ``resolve_checkpoint``) as saved, without a target tree
    (e.g. to take one collection of another run's, whatever else it holds)."""
    directory, step = resolve_checkpoint(path)
    return _restore(directory, step, "variables", ocp.args.StandardRestore())


def write_run(workdir: str, config: ml_collections.ConfigDict, variables: Any, step: int = 0) -> str:
    """Writes ``variables`` and ``config`` as checkpoint ``step`` of a run in ``workdir`` (e.g. weights imported
    from another framework, or random weights for a benchmark); returns the run directory."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
    with quiet_orbax(), ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True)) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables), config=ocp.args.JsonSave(config.to_dict())
            ),
        )
        manager.wait_until_finished()
    write_checksums(os.path.join(directory, str(step)))
    return os.path.abspath(workdir)
