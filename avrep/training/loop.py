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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from avrep import runs
from avrep.tasks import build_task
from avrep.training import mesh as mesh_lib
from avrep.training.checkpointing import Checkpointer
from avrep.training.logging import MetricLogger
from avrep.training.optimizer import make_optimizer
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


def make_train_step(task, tx: optax.GradientTransformation, schedule):
    """The pure training step (not yet compiled)."""

    def train_step(state, batch, rng):
        step_rng = jax.random.fold_in(rng, state["step"])
        grad_fn = jax.value_and_grad(task.loss, has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(
            state["params"], state["model_state"], batch, step_rng, state["step"]
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state["step"]))
        new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state, "opt_state": opt_state}
        return new_state, metrics

    return train_step


def _train_state(step: int, variables: dict, opt_state, mesh) -> dict:
    """The step's state: ``params`` trained by the optimizer, other collections as ``model_state``."""
    return {
        "step": jax.device_put(jnp.asarray(step, jnp.int32), mesh_lib.replicated(mesh)),
        "params": variables["params"],
        "model_state": {k: v for k, v in variables.items() if k != "params"},
        "opt_state": opt_state,
    }


def create_state(task, tx: optax.GradientTransformation, mesh, rng: jax.Array) -> dict:
    """Freshly initialised train state, replicated over ``mesh``."""
    replicated = mesh_lib.replicated(mesh)
    variables = jax.jit(task.init_variables, out_shardings=replicated)(rng, task.dummy_batch())
    variables = jax.device_put(task.warm_start(variables), replicated)
    return _train_state(0, variables, jax.jit(tx.init, out_shardings=replicated)(variables["params"]), mesh)


def compile_train_step(task, tx, schedule, mesh, state):
    """``jax.jit`` of the step with explicit shardings: state replicated and donated, batch split."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        make_train_step(task, tx, schedule),
        in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the last metrics."""
    config = ml_collections.ConfigDict(config)
    with config.unlocked():
        config.data.data_dir = resolve_data_dir(config)
    task = build_task(config)
    num_steps = int(config.train.num_steps)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)

    # ---------------------------------------------------------------- data
    if is_main:
        registry.prepare(config.data.name, config.data.data_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("avrep:data_prepared")
    source = task.training_source(open_source(config.data.name, config.data.train_split, config.data.data_dir), workdir)
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
    checkpointer = Checkpointer(workdir, max_to_keep=int(config.train.max_checkpoints_to_keep))
    start = checkpointer.latest_step() or 0
    if start:
        variables = {"params": state["params"], **state["model_state"]}
        variables, opt_state = checkpointer.restore(
            start, _abstract(variables), _abstract(state["opt_state"]), data_iter
        )
        state = _train_state(start, variables, opt_state, mesh)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    # ---------------------------------------------------------------- compiled step
    step_fn = compile_train_step(task, tx, schedule, mesh, state)
    validation = Validation(task, config, mesh, workdir, start) if config.data.get("validation_split") else None

    # ---------------------------------------------------------------- loop
    log_every, ckpt_every = int(config.train.log_every), int(config.train.checkpoint_every)
    logger = MetricLogger(workdir, num_steps, start, enabled=is_main, description=config.get("name", "train"))
    digest_file = None
    if config.get("debug", {}).get("log_batch_digest", False):
        digest_file = open(os.path.join(workdir, f"batches.process{jax.process_index()}.jsonl"), "a", buffering=1)
    pending, last = None, {}

    def flush(pending):
        step, metrics = pending
        values = jax.device_get(metrics)
        logger.write(step, values)
        if not np.isfinite(values["loss"]):  # stop rather than train on (and checkpoint) a diverged state
            raise FloatingPointError(
                f"{config.get('name', 'train')}: loss is {values['loss']} at step {step} "
                f"(metrics { ({k: float(v) for k, v in values.items()}) }); check the inputs "
                f"(NaN features?) and the learning rate"
            )
        return values

    for step in range(start, num_steps):
        if validation is not None and validation.stopped:
            break
        local = next(data_iter)
        if digest_file:
            digest_file.write(json.dumps({"step": step + 1, "digest": _batch_digest(local)}) + "\n")
        state, metrics = step_fn(state, mesh_lib.global_batch(local, mesh), step_rng)
        if pending is not None:  # the previous step's metrics: ready by now, no stall
            last = flush(pending)
            pending = None
        if (step + 1) % log_every == 0 or step + 1 == num_steps:
            pending = (step + 1, metrics)
        logger.advance()
        if (step + 1) % ckpt_every == 0 or step + 1 == num_steps:
            if validation is not None:
                logger.write(step + 1, validation.evaluate(state, step + 1), prefix="validation")
            checkpointer.save(
                step + 1, {"params": state["params"], **state["model_state"]}, state["opt_state"], data_iter, config
            )
        if step + 1 == config.get("debug", {}).get("simulate_preemption_at_step", -1):
            os.kill(os.getpid(), signal.SIGKILL)  # tests: die abruptly, possibly mid-save
    if pending is not None:
        last = flush(pending)
    checkpointer.wait()
    checkpointer.close()
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
