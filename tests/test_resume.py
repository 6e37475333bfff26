"""Stopping and resuming the stage-2 (MDVAE family) and VQ-MAE runs: the resumed run ends bitwise equal to an
uninterrupted one (parameters, optimizer state, data iterator, every logged loss); a feature cache left
half-written by a kill is rebuilt, never reused; and their steps on 8 fake devices equal those on 1."""

import json
import os
import signal

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import run_python

from avrep import runs
from avrep.features import cache as cache_lib
from avrep.features.tokenizers import FrozenTokenizers
from avrep.tasks import build_task
from avrep.training import loop
from avrep.training import mesh as mesh_lib
from configs import vqmae, vqmdvae, vqvae_audio, vqvae_visual
from data_pipelines import pipelines, registry, sources


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """A resume test compiles the same step three times (straight, stopped, resumed runs): with a persistent
    compilation cache the later runs load the first one's executables (bitwise the same program)."""
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_compilation_cache_dir
    compilation_cache.reset_cache()  # the cache is set up once per process, at its first compile
    compilation_cache.set_cache_dir(str(tmp_path_factory.mktemp("xla_cache")))
    yield
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(previous)


def _write_tokenizer(path, module, variant):
    """A tokenizer run with freshly initialised weights: what it encodes does not matter to a resume."""
    config = module.get_config(variant)
    task = build_task(config)
    variables = jax.device_get(jax.jit(task.init_variables)(jax.random.key(0), task.dummy_batch()))
    return runs.write_run(str(path), config, variables)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        setting: {
            "audio": _write_tokenizer(root / f"audio_{setting}", vqvae_audio, variant),
            "visual": _write_tokenizer(root / f"visual_{setting}", vqvae_visual, variant),
        }
        for setting, variant in (("mdvae", "smoke"), ("vqmae", "vqmae,smoke"))
    }


def _config(family, data_dir, tokenizers):
    module, setting = {"vqmdvae": (vqmdvae, "mdvae"), "vqmae": (vqmae, "vqmae")}[family]
    config = module.get_config("smoke")
    config.data.data_dir = data_dir
    registry.prepare(config.data.name, data_dir)  # the VQ-MAE setting's smoke SynthAV is built on first use
    config.tokenizers.audio, config.tokenizers.visual = tokenizers[setting]["audio"], tokenizers[setting]["visual"]
    config.mesh.num_devices = 1  # one device compiles fastest; devices are compared below
    config.train.update(num_steps=8, checkpoint_every=4, log_every=1)
    return config


def _final(workdir):
    """The last checkpoint's step, variables and train state (step, optimizer state) as saved, the data
    iterator's state, and the logged rows."""
    directory, step = runs.resolve_checkpoint(str(workdir))
    items = {item: runs._restore(directory, step, item, ocp.args.StandardRestore()) for item in ("variables", "train")}
    with open(os.path.join(directory, str(step), "data_iter", "process_0-of-1.json")) as f:
        items["data_iter"] = f.read()
    with open(os.path.join(workdir, runs.METRICS_FILE)) as f:
        rows = [json.loads(line) for line in f]
    return step, items, rows


def _assert_bitwise(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("family", ["vqmdvae", "vqmae"])
def test_stopped_run_resumes_bitwise(smoke_data_dir, tokenizers, tmp_path, capsys, family):
    """Ctrl-C after step 6 (last checkpoint: 4), then a rerun: steps 5-8 run again from checkpoint 4, and the run
    ends as if never stopped, each step logged once."""
    config = _config(family, smoke_data_dir, tokenizers)
    config.data.feature_cache_dir = str(tmp_path / "cache")  # shared, so the resumed run must reuse it
    loop.train(config, str(tmp_path / "straight"), log=lambda _: None)

    config.debug.update(simulate_preemption_at_step=6, simulate_signal="SIGINT")
    with pytest.raises(loop.Interrupted, match="after step 6; last checkpoint: step 4"):
        loop.train(config, str(tmp_path / "stopped"), log=lambda _: None)
    config.debug.simulate_preemption_at_step = -1
    capsys.readouterr()
    messages = []
    loop.train(config, str(tmp_path / "stopped"), log=messages.append)
    assert f"feature cache {config.data.feature_cache_dir}/train: reused" in capsys.readouterr().out
    assert any("resumed from step 4" in m for m in messages), messages

    (step, straight, straight_rows), (resumed_step, resumed, resumed_rows) = (
        _final(tmp_path / "straight"),
        _final(tmp_path / "stopped"),
    )
    assert step == resumed_step == 8
    _assert_bitwise(straight["variables"], resumed["variables"])
    _assert_bitwise(straight["train"], resumed["train"])  # Adam's moments and count, the step
    assert straight["data_iter"] == resumed["data_iter"]
    assert [r["step"] for r in resumed_rows] == list(range(1, 9))
    assert [r["train/loss"] for r in resumed_rows] == [r["train/loss"] for r in straight_rows]
    assert len({r["train/loss"] for r in straight_rows}) > 1  # the steps changed the model


_KILLED_BUILD = """
import os, signal, sys
from avrep.features import cache
from avrep.features.tokenizers import FrozenTokenizers
from configs import vqmdvae
from data_pipelines import sources

directory, data_dir, audio, visual = sys.argv[1:]
config = vqmdvae.get_config("smoke")
config.tokenizers.audio, config.tokenizers.visual = audio, visual
encode = cache.iter_utterance_features

def killed_after_two(*args, **kwargs):
    for k, out in enumerate(encode(*args, **kwargs)):
        if k == 2:
            print("killing", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        yield out

cache.iter_utterance_features = killed_after_two
source = sources.open_source(config.data.name, "test", data_dir)
cache.build_feature_cache(directory, FrozenTokenizers(config), source, min_frames=1)
"""


def test_cache_build_killed_midway_is_rebuilt_and_a_damaged_cache_is_not_reused(smoke_data_dir, tokenizers, tmp_path):
    directory = str(tmp_path / "cache" / "test")
    paths = tokenizers["mdvae"]
    killed = run_python(["-c", _KILLED_BUILD, directory, smoke_data_dir, paths["audio"], paths["visual"]], check=False)
    assert killed.returncode == -signal.SIGKILL and "killing" in killed.stdout, killed.stderr[-3000:]
    assert not os.path.exists(directory)  # the half-written build is only in its temporary directory

    config = vqmdvae.get_config("smoke")
    config.tokenizers.audio, config.tokenizers.visual = paths["audio"], paths["visual"]
    frozen = FrozenTokenizers(config)
    source = sources.open_source(config.data.name, "test", smoke_data_dir)
    messages = []

    def build():
        built = cache_lib.build_feature_cache(directory, frozen, source, min_frames=1, log=messages.append)
        return [np.array(built[i]["x_visual"]) for i in range(len(built))]  # copies: the files change below

    first = build()
    assert "built" in messages[-1] and len(first) == len(source), messages
    assert os.listdir(tmp_path / "cache") == ["test"]  # the killed build's temporary directory is gone
    with open(os.path.join(directory, "visual.bin"), "r+b") as f:  # a copy cut short, or a full disk
        f.truncate(os.path.getsize(f.name) // 2)
    again = build()
    assert "is incomplete (visual.bin has " in messages[-2] and "built" in messages[-1], messages
    _assert_bitwise(first, again)
    with open(os.path.join(directory, cache_lib.INDEX_FILE), "w") as f:
        f.write('{"fingerprint": ')  # an index cut short
    build()
    assert "is incomplete (index.json unreadable: JSONDecodeError" in messages[-2], messages


@pytest.mark.slow  # about 70 CPU seconds each on 2 cores: two compiles of the step, one of them for 8 devices
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("family", ["vqmdvae", "vqmae"])
def test_step_on_8_devices_matches_1_device(smoke_data_dir, tokenizers, tmp_path, family):
    """Three steps on the same batches, batch split over 8 devices or not: the losses within 1e-5 relative (only
    the order of the batch reductions differs), and each parameter's total update within 0.1 % of its tensor's
    largest update, plus 8 float32 ulps of its largest value (the rounding of storing it) and 1e-6 of the model's
    largest update (a tensor whose exact gradient is zero gets rounding noise near 1e-12). Plain SGD on the gradient
    scaled to norm 1, so an update is the gradient itself: Adam divides by sqrt(v) and turns the rounding of a
    near-zero gradient into a full-size step (a VQ-MAE tensor with gradients near 1e-8 moved by 1e-5 on one device
    and 6e-5 on eight)."""
    config = _config(family, smoke_data_dir, tokenizers)
    config.data.examples_per_batch = 8  # one example per device
    task = build_task(config)
    source = task.training_source(sources.open_source(config.data.name, "train", smoke_data_dir), str(tmp_path))
    iterator = pipelines.training_iterator(source, task.pipeline, task.framing, seed=0)
    batches = [next(iterator) for _ in range(3)]
    schedule = optax.constant_schedule(1e-2)
    tx = task.optimizer(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(schedule)))
    results = []
    for devices in (1, 8):
        mesh = mesh_lib.make_mesh({"data": -1, "num_devices": devices})
        state = loop.create_state(task, tx, mesh, jax.random.key(0))
        initial = jax.device_get(state["params"])
        step = loop.compile_train_step(task, tx, schedule, mesh, state)
        losses = []
        for batch in batches:
            state, metrics = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(1))
            losses.append(float(metrics["loss"]))
        assert mesh.size == devices
        results.append((losses, jax.tree.map(np.subtract, jax.device_get(state["params"]), initial), initial))
    (losses1, updates1, initial), (losses8, updates8, _) = results
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    assert losses1[0] != losses1[-1]
    moved = 0
    ulp, largest = np.finfo(np.float32).eps, max(np.abs(a).max() for a in jax.tree.leaves(updates1))
    for a, b, p in zip(*(jax.tree.leaves(t) for t in (updates1, updates8, initial)), strict=True):
        tolerance = 1e-3 * np.abs(a).max() + 8 * ulp * np.abs(p).max() + 1e-6 * largest
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance)
        moved += bool(np.abs(a).max() > 1e3 * ulp * np.abs(p).max())
    assert moved > len(jax.tree.leaves(updates1)) // 2
