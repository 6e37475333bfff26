"""The training step and its state, compiled over a mesh: no data-pipeline imports, so benchmarks and
cross-platform export checks build exactly the step that training runs (``avrep.training.loop`` re-exports
these names).

The state is ``{"step", "params", "model_state", "opt_state"}``; parameters, optimizer state and model state
are laid out by ``avrep.training.mesh.state_shardings`` (replicated, or split over the ``fsdp`` axis), the
batch is split over ``('data', 'fsdp')``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from avrep.training import mesh as mesh_lib


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
    """Freshly initialised train state over ``mesh``: replicated, or split over its ``fsdp`` axis
    (``mesh_lib.state_shardings``) where that axis has more than one device."""
    batch = task.dummy_batch()
    variable_shardings = mesh_lib.state_shardings(jax.eval_shape(task.init_variables, rng, batch), mesh)
    variables = jax.jit(task.init_variables, out_shardings=variable_shardings)(rng, batch)
    variables = jax.device_put(task.warm_start(variables), variable_shardings)
    opt_shardings = mesh_lib.state_shardings(jax.eval_shape(tx.init, variables["params"]), mesh)
    return _train_state(0, variables, jax.jit(tx.init, out_shardings=opt_shardings)(variables["params"]), mesh)


def compile_train_step(task, tx, schedule, mesh, state):
    """``jax.jit`` of the step with explicit shardings: the state's own (donated), batch split."""
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        make_train_step(task, tx, schedule),
        in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
