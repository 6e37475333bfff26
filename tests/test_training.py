"""Training infrastructure: sharded == single-device step, kill-and-resume, multi-process, errors."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, run_python

from avrep import load_checkpoint
from avrep.tasks import build_task
from avrep.training import loop
from avrep.training import mesh as mesh_lib
from avrep.training.optimizer import make_optimizer
from configs import vqvae_audio, vqvae_visual
from data_pipelines import pipelines, sources


def _smoke(module, data_dir, **train):
    config = module.get_config("smoke")
    config.data.data_dir = data_dir
    config.train.update(train)
    return config


# The visual tokenizer's case is opt-in (-m slow): the audio case and tests/test_fsdp.py cover the sharded step.
@pytest.mark.parametrize("module", [vqvae_audio, pytest.param(vqvae_visual, marks=pytest.mark.slow)])
def test_step_on_8_devices_matches_1_device(smoke_data_dir, module):
    config = _smoke(module, smoke_data_dir)
    task = build_task(config)
    source = sources.open_source(config.data.name, "train", smoke_data_dir)
    batches = [
        next(it) for it in [pipelines.training_iterator(source, task.pipeline, task.framing, seed=0)] for _ in range(3)
    ]
    tx, schedule = make_optimizer(config.optimizer, 10)
    results = []
    for devices in (1, 8):
        mesh = mesh_lib.make_mesh({"data": -1, "num_devices": devices})
        state = loop.create_state(task, tx, mesh, jax.random.key(0))
        step = loop.compile_train_step(task, tx, schedule, mesh, state)
        losses = []
        for batch in batches:
            state, metrics = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(1))
            losses.append(float(metrics["loss"]))
        assert len(state["params"]) and mesh.size == devices
        results.append((losses, jax.device_get(state)))
    (losses1, state1), (losses8, state8) = results
    np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
    assert losses1[0] != losses1[-1]  # the steps really changed the model
    for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state8)):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6)


def _train_cmd(workdir, data_dir, steps, *extra):
    return [
        "train.py",
        "--config",
        "configs/vqvae_audio.py:smoke",
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        f"--config.train.num_steps={steps}",
        "--config.train.checkpoint_every=4",
        "--config.debug.log_batch_digest=True",
        *extra,
    ]


def _digests(workdir, process=0):
    with open(os.path.join(workdir, f"batches.process{process}.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_killed_run_resumes_bitwise_identically(smoke_data_dir, tmp_path):
    steps = 16
    run_python(_train_cmd(tmp_path / "straight", smoke_data_dir, steps))
    killed = run_python(
        _train_cmd(tmp_path / "killed", smoke_data_dir, steps, "--config.debug.simulate_preemption_at_step=10"),
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "killed").step in (4, 8)  # died mid-run: no final checkpoint
    run_python(_train_cmd(tmp_path / "killed", smoke_data_dir, steps))

    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "killed")
    assert straight.step == resumed.step == steps
    for a, b in zip(jax.tree.leaves(straight.variables), jax.tree.leaves(resumed.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected = {d["step"]: d["digest"] for d in _digests(tmp_path / "straight")}
    seen = _digests(tmp_path / "killed")
    assert len(seen) > steps  # steps after the last checkpoint ran twice
    assert {d["step"] for d in seen} == set(expected)
    for d in seen:
        assert d["digest"] == expected[d["step"]], f"batch of step {d['step']} differs after resume"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(smoke_data_dir, tmp_path):
    steps = 6
    run_python(_train_cmd(tmp_path / "single", smoke_data_dir, steps), devices=2)
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "PYTHONPATH": REPO}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *_train_cmd(
                    tmp_path / "multi",
                    smoke_data_dir,
                    steps,
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)

    single, multi = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "multi")
    assert multi.step == steps
    for a, b in zip(jax.tree.leaves(single.variables), jax.tree.leaves(multi.variables)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    # Each process read its own half of every global batch.
    d0, d1 = _digests(tmp_path / "multi", 0), _digests(tmp_path / "multi", 1)
    assert len(d0) == len(d1) == steps and all(a["digest"] != b["digest"] for a, b in zip(d0, d1))


def test_load_checkpoint_gives_a_ready_model(smoke_data_dir, tmp_path):
    loop.train(_smoke(vqvae_audio, smoke_data_dir, num_steps=2, checkpoint_every=2), str(tmp_path))
    model = load_checkpoint(tmp_path)
    assert model.step == 2 and set(model.variables) >= {"params", "vq_ema"}
    x = np.abs(np.random.default_rng(0).normal(size=(5, 513))).astype(np.float32) + 1e-3
    out = model.apply_fn(model.variables, x)
    assert out["recon"].shape == (5, 513) and out["indices"].shape == (5, 64)
    z_e = model.module.apply(model.variables, x, method="encode")
    assert z_e.shape == (5, 64, 8)


def test_missing_checkpoint_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("task", "vqgan", "config key task must be one of"),
        ("model.modality", "smell", "config key model.modality must be 'audio' or 'visual'"),
        ("optimizer.schedule", "linear", "config key optimizer.schedule"),
        ("mesh.num_devices", 99, "config key mesh.num_devices=99"),
    ],
)
def test_bad_config_values_are_named(smoke_data_dir, tmp_path, key, value, message):
    config = _smoke(vqvae_audio, smoke_data_dir)
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
    with pytest.raises(ValueError, match=message):
        loop.train(config, str(tmp_path))


def test_visual_augmentation_flips_and_scales_colours():
    from avrep.tasks.vqvae import augment_images

    x = np.random.default_rng(0).uniform(-0.4, 0.0, (32, 4, 5, 3)).astype(np.float32)  # no clipping
    key = jax.random.key(3)
    np.testing.assert_array_equal(augment_images(x, key, False, 0.0), x)
    flipped = np.asarray(augment_images(x, key, True, 0.0))
    is_flip = [np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, x)]
    is_same = [np.array_equal(f, o) for f, o in zip(flipped, x)]
    assert all(a != b for a, b in zip(is_flip, is_same)) and 8 < sum(is_flip) < 24
    gain = (np.asarray(augment_images(x, key, False, 0.2)) + 0.5) / (x + 0.5)
    per_channel = gain.reshape(32, -1, 3)
    np.testing.assert_allclose(per_channel, np.broadcast_to(per_channel[:, :1], per_channel.shape), rtol=1e-5)
    assert 0.1 < np.log(per_channel[:, 0]).std() < 0.3


def test_ssim_weight_adds_the_ssim_term(smoke_data_dir):
    """loss.ssim_weight (visual tokenizer) adds ssim_weight · (1 - SSIM) to the MSE loss."""
    config = _smoke(vqvae_visual, smoke_data_dir)
    config.data.augment.update(hflip=False, color_jitter=0.0)
    source = sources.open_source(config.data.name, "train", smoke_data_dir)
    losses = {}
    for weight in (0.0, 0.5):
        config.loss.ssim_weight = weight
        task = build_task(config)
        batch = next(pipelines.training_iterator(source, task.pipeline, task.framing, seed=0))
        variables = task.init_variables(jax.random.key(0), batch)
        params, state = variables.pop("params"), variables
        losses[weight] = task.loss(params, state, batch, jax.random.key(1), 0)
    (plain, _), (weighted, (metrics, _)) = losses[0.0], losses[0.5]
    assert 0.0 < float(metrics["ssim"]) < 1.0
    np.testing.assert_allclose(float(weighted) - float(plain), 0.5 * (1.0 - float(metrics["ssim"])), rtol=1e-4)
    audio = _smoke(vqvae_audio, smoke_data_dir)
    audio.loss.ssim_weight = 0.1
    with pytest.raises(ValueError, match="config key loss.ssim_weight"):
        build_task(audio)


def test_diverged_loss_stops_the_run_naming_the_step(smoke_data_dir, tmp_path):
    config = _smoke(vqvae_audio, smoke_data_dir, log_every=4)
    config.optimizer.learning_rate = float("nan")  # the first update makes every parameter NaN
    with pytest.raises(FloatingPointError, match=r"vqvae_audio: loss is nan at step 4"):
        loop.train(config, str(tmp_path))
