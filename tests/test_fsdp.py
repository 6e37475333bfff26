"""Parameter sharding over the mesh's ``fsdp`` axis (avrep.training.mesh.state_shardings), on 8 fake CPU devices:
large arrays are split, and training steps equal the replicated run's."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from avrep.tasks import build_task
from avrep.training import mesh as mesh_lib
from avrep.training import step as step_lib
from avrep.training.optimizer import make_optimizer
from benchmarks.run import _random_like_dummy_batch
from configs import dvae


def test_fsdp_rule_splits_the_largest_divisible_axis_of_large_arrays():
    assert mesh_lib.fsdp_spec((513, 256), 8) == P(None, "fsdp")  # 513 is not divisible by 8
    assert mesh_lib.fsdp_spec((1024, 256), 8) == P("fsdp", None)
    assert mesh_lib.fsdp_spec((256, 256), 8) == P("fsdp", None)  # ties: the first axis
    assert mesh_lib.fsdp_spec((100, 8), 8) == P()  # under FSDP_MIN_SIZE elements: replicated
    assert mesh_lib.fsdp_spec((513, 513), 8) == P()  # no divisible axis
    assert mesh_lib.fsdp_spec((1024, 256), 1) == P()
    assert mesh_lib.fsdp_spec((), 8) == P()


def _run(mesh_config, steps=3):
    config = dvae.get_config("srnn,smoke")  # LSTMs and dense layers of 513 x 128 / 128 x 128 parameters
    config.data.examples_per_batch = 16
    config.train.output_bias_utterances = 0  # random batches: no corpus to read
    task = build_task(config)
    mesh = mesh_lib.make_mesh(mesh_config)
    tx, schedule = make_optimizer(config.optimizer, 100)
    state = step_lib.create_state(task, tx, mesh, jax.random.key(0))
    step = step_lib.compile_train_step(task, tx, schedule, mesh, state)
    batch = mesh_lib.global_batch(_random_like_dummy_batch(task, np.random.default_rng(0), 0.1), mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_fsdp_training_equals_replicated_and_holds_a_fraction_of_the_parameters():
    replicated, losses_replicated = _run({"data": 8, "fsdp": 1})
    sharded, losses_sharded = _run({"data": 1, "fsdp": 8})
    split = [x for x in jax.tree.leaves(sharded["params"]) if "fsdp" in tuple(x.sharding.spec) and x.size >= 2**14]
    assert split, "no parameter was split over fsdp"
    for x in split:
        assert x.addressable_shards[0].data.size == x.size // 8
    adam_moments = [x for x in jax.tree.leaves(sharded["opt_state"]) if "fsdp" in tuple(x.sharding.spec)]
    assert len(adam_moments) >= 2 * len(split)  # the optimizer state follows its parameters
    np.testing.assert_allclose(losses_sharded, losses_replicated, rtol=1e-5)
    # Reductions run in another order when split; Adam divides by sqrt(v), so near-zero gradients' rounding
    # differences reach the parameters at up to ~1e-5 (0.5 % of the 3 steps' largest change, 3 x lr = 6e-3).
    for a, b in zip(jax.tree.leaves(sharded["params"]), jax.tree.leaves(replicated["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=3e-5)
