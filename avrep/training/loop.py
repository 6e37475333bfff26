"""The one generic training loop: config + workdir -> trained, checkpointed model.

Banner-commented blocks as in big_vision: data, mesh and sharding, model and optimizer,
checkpoint restore, compiled step, loop. The step is a pure function
``(state, batch, rng) -> (state, metrics)`` compiled once with ``jax.jit`` over a mesh, the state
donated. Metrics are fetched one step late so the host never waits on the device inside the loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from avrep import runs
from avrep.tasks import build_task
from avrep.training import epochs as epochs_lib
from avrep.training import mesh as mesh_lib
from avrep.training.checkpointing import Checkpointer
from avrep.training.logging import MetricLogger
from avrep.training.optimizer import make_optimizer
from avrep.training.step import _train_state, compile_train_step, create_state, make_train_step  # noqa: F401
from data_pipelines import registry
from data_pipelines.pipelines import training_iterator
from data_pipelines.sources import open_source


def resolve_data_dir(config: ml_collections.ConfigDict) -> str:
    """An empty ``data.data_dir`` means $AVREP_DATA_DIR, else TFDS's default ~/tensorflow_datasets."""
    return (
        config.data.get("data_dir") or os.environ.get("AVREP_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    )


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _batch_digest(batch) -> str:
    h = hashlib.sha1()
    for leaf in jax.tree.leaves(batch):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


class Interrupted(Exception):
    """Training stopped by a signal after settling its checkpoints; ``exit_code`` is the shell's 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _positive(config: ml_collections.ConfigDict, key: str, *, allow_zero: bool = False, number=int):
    block, field = key.split(".")
    value = config[block].get(field, 0)
    try:
        ok = number(value) == value and (number(value) >= 0 if allow_zero else number(value) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        what = "a number >= 0 (0: off)" if allow_zero else "a positive integer"
        raise ValueError(f"config key {key}={value!r}: expected {what}")
    return number(value)


def check_train_config(config: ml_collections.ConfigDict) -> None:
    """The loop's own config keys, checked before any data or compile work (one line naming the key). A step key
    whose epoch key is given is checked once the epochs are converted (``avrep.training.epochs``)."""
    in_epochs = {step_key for key, step_key in epochs_lib.EPOCH_KEYS if key in epochs_lib.epoch_keys(config)}
    for key in ("train.num_steps", "train.log_every", "train.checkpoint_every", "train.max_checkpoints_to_keep"):
        if key not in in_epochs:
            _positive(config, key)
    _positive(config, "train.checkpoint_every_minutes", allow_zero=True, number=float)


class _Signals:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) turned into a flag the loop reads after every step. A second Ctrl-C
    interrupts at once. Multi-process runs read SIGTERM through JAX's preemption sync point instead, so every
    process saves at the same step."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        wanted = [signal.SIGINT] + ([signal.SIGTERM] if jax.process_count() == 1 else [])
        for signum in wanted:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def preempted(self, step: int) -> bool:
        if jax.process_count() > 1:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
                return False
        return self.received == signal.SIGTERM

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def params_from_run(path: str, params):
    """A warm start (config key ``train.init_from``): the ``params`` of another run's latest checkpoint, placed as
    ``params`` are (the same tree and shapes; e.g. a sequence model trained on one corpus, fine-tuned without
    labels on another). Other collections (codebook, batch and feature statistics) and the optimizer start fresh."""
    saved = runs.read_variables(path).get("params")
    where = f"config key train.init_from={path}"
    if saved is None:
        raise ValueError(f"{where}: its checkpoint holds no 'params'")
    shapes = jax.tree.map(np.shape, saved)
    expected = jax.tree.map(np.shape, params)
    if jax.tree.structure(shapes) != jax.tree.structure(expected) or shapes != expected:
        raise ValueError(f"{where}: its parameters differ from this model's in names or shapes (another model?)")
    return jax.tree.map(lambda p, x: jax.device_put(np.asarray(x, p.dtype), p.sharding), params, saved)


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def train(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict[str, Any]:
    """Trains ``config`` in ``workdir``, resuming from its latest intact checkpoint; returns the last metrics.

    A run already trained to ``train.num_steps`` returns at once. SIGTERM saves a checkpoint and raises
    ``Interrupted``; SIGINT lets a checkpoint in flight finish and raises ``Interrupted``."""
    config = ml_collections.ConfigDict(config)
    with config.unlocked():
        config.data.data_dir = resolve_data_dir(config)
    check_train_config(config)
    task = build_task(config)
    name = config.get("name", "train")
    num_steps = int(config.train.num_steps)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    checkpointer = Checkpointer(workdir, max_to_keep=int(config.train.max_checkpoints_to_keep))
    finished = checkpointer.intact_latest_step()

    def already_trained() -> bool:
        if finished is None or finished < num_steps:
            return False
        checkpointer.close()
        if is_main:
            log(f"[avrep] {name}: already trained to step {finished} ({checkpointer.directory}): nothing to do")
        return True

    # A schedule in epochs knows its length only once the training split is open (below).
    in_epochs = bool(epochs_lib.epoch_keys(config))
    if not in_epochs and already_trained():
        return {"step": finished}

    # ---------------------------------------------------------------- data
    if is_main:
        registry.prepare(config.data.name, config.data.data_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("avrep:data_prepared")
    source = task.training_source(open_source(config.data.name, config.data.train_split, config.data.data_dir), workdir)
    if in_epochs:
        config, derived = epochs_lib.resolve_epochs(config, *task.epoch_size(source))
        check_train_config(config)
        num_steps = int(config.train.num_steps)
        if is_main:
            log(f"[avrep] {name}: {derived}")
        if already_trained():
            return {"step": finished}
    data_iter = training_iterator(
        source,
        task.pipeline,
        task.framing,
        seed=int(config.seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        cache_mb=float(config.data.get("cache_mb", 0)),
    )

    # ---------------------------------------------------------------- mesh and sharding
    mesh = mesh_lib.make_mesh(config.mesh)
    if task.pipeline.examples_per_batch % mesh.size:
        raise ValueError(
            f"config key data.examples_per_batch={task.pipeline.examples_per_batch} must be "
            f"divisible by the {mesh.size} devices of the mesh"
        )

    # ---------------------------------------------------------------- model and optimizer
    init_rng, step_rng = jax.random.split(jax.random.key(int(config.seed)))
    tx, schedule = make_optimizer(config.optimizer, num_steps)
    tx = task.optimizer(tx)
    state = create_state(task, tx, mesh, init_rng)

    # ---------------------------------------------------------------- checkpoint restore
    variables = {"params": state["params"], **state["model_state"]}
    start, variables, opt_state = checkpointer.restore_latest(
        _abstract(variables), _abstract(state["opt_state"]), data_iter, log=log if is_main else lambda _: None
    )
    if start:
        state = _train_state(start, variables, opt_state, mesh)
        if is_main:
            log(f"[avrep] {name}: resumed from step {start} ({checkpointer.directory}/{start})")
    elif config.train.get("init_from"):
        state["params"] = params_from_run(str(config.train.init_from), state["params"])
        if is_main:
            log(f"[avrep] {name}: parameters from {config.train.init_from} (config key train.init_from)")
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    # ---------------------------------------------------------------- compiled step
    step_fn = compile_train_step(task, tx, schedule, mesh, state)
    all_finite = jax.jit(lambda s: _all_finite((s["params"], s["model_state"])))
    validation = Validation(task, config, mesh, workdir, start) if config.data.get("validation_split") else None

    # ---------------------------------------------------------------- loop
    log_every, ckpt_every = int(config.train.log_every), int(config.train.checkpoint_every)
    ckpt_seconds = 60 * float(config.train.get("checkpoint_every_minutes", 0))
    debug = config.get("debug", {})
    logger = MetricLogger(workdir, num_steps, start, enabled=is_main, description=name)
    digest_file = None
    if debug.get("log_batch_digest", False):
        digest_file = open(os.path.join(workdir, f"batches.process{jax.process_index()}.jsonl"), "a", buffering=1)
    pending, last, saved_step, saved_at = None, {}, start, time.monotonic()

    def fetch(step, metrics, write=True):
        values = jax.device_get(metrics)
        if write:
            logger.write(step, values)
        if not np.isfinite(values["loss"]):  # stop rather than train on (and checkpoint) a diverged state
            raise FloatingPointError(
                f"{name}: loss is {values['loss']} at step {step} "
                f"(metrics { ({k: float(v) for k, v in values.items()}) }); check the inputs "
                f"(NaN features?) and the learning rate; last checkpoint: step {saved_step}"
            )
        return values

    def time_to_save(step) -> bool:
        if not ckpt_seconds:
            return False
        if jax.process_count() == 1:
            return time.monotonic() - saved_at >= ckpt_seconds
        if step % log_every:  # processes agree at log steps only (one broadcast)
            return False
        due = np.int32(time.monotonic() - saved_at >= ckpt_seconds)
        return bool(multihost_utils.broadcast_one_to_all(due))

    def save(step, state, metrics):
        nonlocal saved_step, saved_at, last
        # Never write a diverged state: the step's loss and every parameter are checked first, whatever log_every.
        last = fetch(step, metrics, write=step % log_every == 0 or step == num_steps)
        if not bool(jax.device_get(all_finite(state))):
            raise FloatingPointError(
                f"{name}: non-finite parameters or model state after step {step}; not saved "
                f"(last checkpoint: step {saved_step}); check the learning rate"
            )
        if validation is not None:
            logger.write(step, validation.evaluate(state, step), prefix="validation")
        checkpointer.save(
            step, {"params": state["params"], **state["model_state"]}, state["opt_state"], data_iter, config
        )
        saved_step, saved_at = step, time.monotonic()

    try:
        with _Signals() as signals:
            for step in range(start, num_steps):
                if validation is not None and validation.stopped:
                    break
                waiting_since = time.perf_counter()
                local = next(data_iter)
                if digest_file:
                    digest_file.write(json.dumps({"step": step + 1, "digest": _batch_digest(local)}) + "\n")
                batch = mesh_lib.global_batch(local, mesh)
                logger.waited_for_input(time.perf_counter() - waiting_since)
                state, metrics = step_fn(state, batch, step_rng)
                if pending is not None:  # the previous step's metrics: ready by now, no stall
                    last = fetch(*pending)
                    pending = None
                done = step + 1
                logger.advance()
                if done % ckpt_every == 0 or done == num_steps or time_to_save(done):
                    save(done, state, metrics)
                elif done % log_every == 0:
                    pending = (done, metrics)
                if done == debug.get("simulate_preemption_at_step", -1):  # tests: a signal after this step
                    os.kill(os.getpid(), getattr(signal, debug.get("simulate_signal", "SIGKILL")))
                if signals.preempted(done) and done < num_steps:
                    if saved_step != done:
                        save(done, state, metrics)
                    checkpointer.wait()
                    raise Interrupted(
                        f"[avrep] {name}: SIGTERM after step {done}: saved checkpoint {done}; exiting", 143
                    )
                if signals.received == signal.SIGINT and done < num_steps:
                    checkpointer.wait()
                    raise Interrupted(
                        f"[avrep] {name}: interrupted (Ctrl-C) after step {done}; last checkpoint: step {saved_step}",
                        130,
                    )
            if pending is not None:
                last = fetch(*pending)
    finally:
        checkpointer.close()  # finishes a save in flight: no checkpoint is abandoned half-written
        logger.close()
        if digest_file:
            digest_file.close()
    return {"step": int(state["step"]), **{k: float(np.asarray(v)) for k, v in last.items()}}


class Validation:
    """The loss on fixed windows of ``data.validation_split`` (``data.validation_batches`` batches drawn once),
    at the schedules' final values (full KL weight), at every checkpoint; early stopping after
    ``train.early_stopping_patience`` checkpoints without improvement (0: never). The history lives in
    metrics.jsonl (``validation/loss``), so a resumed run knows its best step and evaluation can pick it
    (``avrep.runs.best_step``)."""

    def __init__(self, task, config, mesh, workdir: str, start: int):
        d = config.data
        source = open_source(d.name, d.validation_split, d.data_dir)
        it = training_iterator(
            source,
            task.pipeline,
            task.framing,
            seed=int(config.seed) + 1,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.batches = [mesh_lib.global_batch(next(it), mesh) for _ in range(int(d.get("validation_batches", 8)))]
        final = jnp.int32(int(config.train.num_steps))
        self._loss = jax.jit(
            lambda state, batch: task.loss(state["params"], state["model_state"], batch, jax.random.key(0), final)[0]
        )
        self.patience = int(config.train.get("early_stopping_patience", 0))
        self.history = [(s, v) for s, v in runs.validation_history(workdir) if s <= start]

    def evaluate(self, state, step: int) -> dict[str, float]:
        loss = float(np.mean([jax.device_get(self._loss(state, b)) for b in self.batches]))
        self.history.append((step, loss))
        return {"loss": loss}

    @property
    def stopped(self) -> bool:
        """True once the last ``patience`` validations all failed to improve on the best before them."""
        if not self.patience or len(self.history) <= self.patience:
            return False
        best = min(v for _, v in self.history[: -self.patience])
        return all(v >= best for _, v in self.history[-self.patience :])
