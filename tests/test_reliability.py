"""Nothing silently wrong: damaged checkpoints, non-finite saves, resume logs, signals, config errors, caches."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from conftest import run_python

from avrep import runs
from avrep.tasks import build_task
from avrep.training import loop
from avrep.training import mesh as mesh_lib
from avrep.training.checkpointing import Checkpointer
from avrep.training.optimizer import make_optimizer
from configs import vqvae_audio
from data_pipelines import pipelines, sources

FAULTS = ("truncate", "zero", "flip")


def _smoke(data_dir, **train):
    config = vqvae_audio.get_config("smoke")
    config.data.data_dir = data_dir
    config.mesh.num_devices = 1  # one device compiles fastest; sharding is tested elsewhere
    config.train.update(train)
    return config


def _inject(path: str, fault: str) -> bool:
    """Damages a file in place; False when the fault leaves it unchanged (e.g. zeroing an empty file)."""
    with open(path, "rb") as f:
        data = f.read()
    if fault == "truncate":
        damaged = data[: len(data) // 2]
    elif fault == "zero":
        damaged = bytes(len(data))
    else:  # three bytes flipped in the middle of the file
        damaged = bytearray(data)
        for i in range(len(data) // 2, min(len(data) // 2 + 3, len(data))):
            damaged[i] ^= 0xFF
        damaged = bytes(damaged)
    with open(path, "wb") as f:
        f.write(damaged)
    return damaged != data


@pytest.fixture(scope="module")
def trained(smoke_data_dir, tmp_path_factory):
    """A smoke run with checkpoints 4 and 8, and what restoring it needs."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = _smoke(smoke_data_dir, num_steps=8, checkpoint_every=4, max_checkpoints_to_keep=3)
    loop.train(config, workdir, log=lambda _: None)
    task = build_task(config)
    tx, _ = make_optimizer(config.optimizer, 8)
    mesh = mesh_lib.make_mesh({"data": -1, "num_devices": 1})
    state = loop.create_state(task, tx, mesh, jax.random.key(0))
    variables = {"params": state["params"], **state["model_state"]}
    abstract = (loop._abstract(variables), loop._abstract(state["opt_state"]))
    source = sources.open_source(config.data.name, "train", smoke_data_dir)

    def restore(checkpoints_dir):
        messages = []
        checkpointer = Checkpointer(os.path.dirname(checkpoints_dir))
        data_iter = pipelines.training_iterator(source, task.pipeline, task.framing, seed=0)
        try:
            step, variables, opt_state = checkpointer.restore_latest(*abstract, data_iter, log=messages.append)
        finally:
            checkpointer.close()
        return step, jax.device_get((variables, opt_state)), data_iter.get_state(), messages

    clean = os.path.join(workdir, "only_step_4", runs.CHECKPOINT_SUBDIR)
    shutil.copytree(os.path.join(workdir, runs.CHECKPOINT_SUBDIR), clean)
    shutil.rmtree(os.path.join(clean, "8"))
    step, *step_4 = restore(clean)
    assert step == 4
    return workdir, restore, step_4


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _files(step_dir):
    return sorted(os.path.relpath(os.path.join(r, n), step_dir) for r, _, ns in os.walk(step_dir) for n in ns)


def test_every_damaged_checkpoint_file_is_caught(trained, tmp_path):
    """Each file of a checkpoint truncated, zeroed or with 3 bytes flipped: the checksum check names the step and
    the file (before anything is read), so a resume never continues from it (outcomes counted and printed)."""
    workdir, _, _ = trained
    step_dir = os.path.join(workdir, runs.CHECKPOINT_SUBDIR, "8")
    files = _files(step_dir)
    assert runs.CHECKSUM_FILE in files and len(files) > 20
    outcomes = {"named by the checksum check": 0, "fault left the file unchanged": 0}
    for k, (name, fault) in enumerate((n, f) for n in files for f in FAULTS):
        trial = os.path.join(tmp_path, str(k))
        shutil.copytree(step_dir, os.path.join(trial, "8"))
        if not _inject(os.path.join(trial, "8", name), fault):
            outcomes["fault left the file unchanged"] += 1
            continue
        with pytest.raises(runs.CheckpointError, match=r"^checkpoint step 8 \(") as e:
            runs.verify_checkpoint(trial, 8)
        assert name in str(e.value), f"{fault} {name}: {e.value}"
        outcomes["named by the checksum check"] += 1
        shutil.rmtree(trial)
    print(f"\n{len(files) * len(FAULTS)} faults injected into the {len(files)} files of a checkpoint: {outcomes}")
    assert outcomes["named by the checksum check"] >= 2 * len(files)


@pytest.mark.parametrize(
    "name, fault",
    [
        ("variables/d/*", "flip"),  # the case: a weight silently became -8e30
        ("train/_METADATA", "truncate"),
        ("data_iter/process_0-of-1.json", "zero"),
        (runs.CHECKSUM_FILE, "truncate"),
    ],
)
def test_resume_falls_back_bitwise_to_the_newest_intact_checkpoint(trained, tmp_path, name, fault):
    workdir, restore, (reference, reference_iter, _) = trained
    checkpoints = os.path.join(workdir, runs.CHECKPOINT_SUBDIR)
    trial = os.path.join(tmp_path, "trial", runs.CHECKPOINT_SUBDIR)
    shutil.copytree(checkpoints, trial)
    if name.endswith("*"):
        name = next(f for f in _files(os.path.join(trial, "8")) if f.startswith(name[:-1]))
    assert _inject(os.path.join(trial, "8", name), fault)
    step, restored, restored_iter, messages = restore(trial)
    assert step == 4
    assert any("step 8" in m and name in m for m in messages), messages
    assert messages[-1] == "[avrep] falling back to step 4, the newest intact checkpoint"
    _assert_trees_equal(restored, reference)
    assert restored_iter == reference_iter
    assert runs.checkpoint_steps(trial) == [4]  # moved aside: new saves are not shadowed by it


def test_no_intact_checkpoint_stops_naming_the_files(trained, tmp_path):
    workdir, restore, _ = trained
    trial = os.path.join(tmp_path, runs.CHECKPOINT_SUBDIR)
    shutil.copytree(os.path.join(workdir, runs.CHECKPOINT_SUBDIR), trial)
    _inject(os.path.join(trial, "8", "variables", "_METADATA"), "flip")
    _inject(os.path.join(trial, "4", "data_iter", "process_0-of-1.json"), "zero")
    with pytest.raises(runs.CheckpointError) as e:
        restore(trial)
    message = str(e.value)
    assert "no intact checkpoint" in message and "\n" not in message
    assert "step 8" in message and "variables/_METADATA" in message
    assert "step 4" in message and "data_iter/process_0-of-1.json" in message
    assert runs.checkpoint_steps(trial) == [4, 8]  # nothing moved when nothing could be restored


@pytest.mark.parametrize("damaged", ["variables/_METADATA", "data_iter/process_0-of-1.json"])
def test_checkpoint_without_checksums_that_cannot_be_read_falls_back(trained, tmp_path, damaged):
    """Checkpoints written before checksums existed: a file that cannot be read is named, and the older step used."""
    workdir, restore, _ = trained
    trial = os.path.join(tmp_path, runs.CHECKPOINT_SUBDIR)
    shutil.copytree(os.path.join(workdir, runs.CHECKPOINT_SUBDIR), trial)
    for step in ("4", "8"):
        os.remove(os.path.join(trial, step, runs.CHECKSUM_FILE))
    open(os.path.join(trial, "8", damaged), "w").close()  # blanked
    step, _, _, messages = restore(trial)
    assert step == 4
    assert any("step 8" in m and damaged.split("/")[0] in m for m in messages), messages


def test_load_checkpoint_names_a_damaged_file(trained, tmp_path):
    workdir, _, _ = trained
    run = os.path.join(tmp_path, "run")
    shutil.copytree(workdir, run)
    array_file = next(
        os.path.join(r, n) for r, _, ns in os.walk(os.path.join(run, "checkpoints", "8", "variables")) for n in ns
    )
    _inject(array_file, "flip")
    with pytest.raises(runs.CheckpointError, match=r"step 8 .* does not match its checksum"):
        runs.read_config(run)


@pytest.mark.parametrize("checkpoint_every, message", [(1, "non-finite parameters"), (2, "loss is nan at step 2")])
def test_non_finite_state_is_never_saved(smoke_data_dir, tmp_path, checkpoint_every, message):
    """With log_every far above checkpoint_every, the loss and the state are still checked before each save."""
    config = _smoke(smoke_data_dir, log_every=100, checkpoint_every=checkpoint_every)
    config.optimizer.learning_rate = float("nan")  # the first update makes every parameter NaN
    with pytest.raises(FloatingPointError, match=message):
        loop.train(config, str(tmp_path), log=lambda _: None)
    assert not os.path.isdir(os.path.join(tmp_path, "checkpoints")) or not runs._step_dirs(
        os.path.join(tmp_path, "checkpoints")
    )


def test_time_based_checkpoints(smoke_data_dir, tmp_path):
    config = _smoke(smoke_data_dir, num_steps=5, checkpoint_every=100, checkpoint_every_minutes=1e-9)
    loop.train(config, str(tmp_path), log=lambda _: None)
    assert runs.checkpoint_steps(tmp_path) == [4, 5]  # every step saved (2 kept), not only the last


def test_finished_run_returns_without_compiling(smoke_data_dir, trained, monkeypatch):
    workdir, _, _ = trained
    monkeypatch.setattr(loop, "create_state", lambda *a: pytest.fail("a finished run was rebuilt"))
    messages = []
    out = loop.train(_smoke(smoke_data_dir, num_steps=8), workdir, log=messages.append)
    assert out == {"step": 8} and messages == [
        f"[avrep] vqvae_audio: already trained to step 8 ({workdir}/checkpoints): nothing to do"
    ]


def _train_cmd(workdir, data_dir, *extra):
    return [
        "train.py",
        "--config",
        "configs/vqvae_audio.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.train.num_steps=12",
        "--config.train.checkpoint_every=4",
        "--config.train.log_every=1",
        *extra,
    ]


def _metric_rows(workdir):
    with open(os.path.join(workdir, runs.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def straight_run(smoke_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    run_python(_train_cmd(workdir, smoke_data_dir))
    return workdir


@pytest.mark.parametrize(
    "signal_name, exit_code, last_checkpoint",
    [
        ("SIGTERM", 143, 6),
        pytest.param("SIGINT", 130, 4, marks=pytest.mark.slow),
        pytest.param("SIGKILL", -9, None, marks=pytest.mark.slow),  # None: 4 if its save committed in time
    ],
)
def test_signal_then_resume_is_bitwise_and_logs_each_step_once(
    smoke_data_dir, straight_run, tmp_path, signal_name, exit_code, last_checkpoint
):
    """SIGTERM saves at once and exits 143; Ctrl-C lets the in-flight save finish and exits 130 with one line;
    the resumed run says so, ends bitwise equal to an uninterrupted one, and logs every step once."""
    hit = tmp_path / "hit"
    signalled = run_python(
        _train_cmd(
            hit,
            smoke_data_dir,
            "--config.debug.simulate_preemption_at_step=6",
            f"--config.debug.simulate_signal={signal_name}",
        ),
        check=False,
    )
    assert signalled.returncode == exit_code, signalled.stderr[-3000:]
    if last_checkpoint is not None:
        assert runs.checkpoint_steps(hit)[-1] == last_checkpoint
    if exit_code > 0:
        assert "Traceback" not in signalled.stderr and "Error" not in signalled.stderr, signalled.stderr[-3000:]
        assert "after step 6" in signalled.stderr.strip().splitlines()[-1]
    resumed = run_python(_train_cmd(hit, smoke_data_dir))
    if last_checkpoint is not None:
        assert f"resumed from step {last_checkpoint}" in resumed.stdout
    for a, b in zip(
        jax.tree.leaves(runs.restore_variables(straight_run, _abstract_of(straight_run))),
        jax.tree.leaves(runs.restore_variables(hit, _abstract_of(hit))),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows, expected = _metric_rows(hit), _metric_rows(straight_run)
    assert [r["step"] for r in rows] == list(range(1, 13))  # each step once, in order
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in expected]
    assert all(0.0 <= r["train/input_wait"] <= 1.0 for r in rows), "input wait is a fraction of the step time"


def _abstract_of(path):
    from avrep import load_checkpoint

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), load_checkpoint(path).variables)


def test_unknown_config_key_is_one_line_before_any_work(smoke_data_dir, tmp_path):
    proc = run_python(_train_cmd(tmp_path / "run", smoke_data_dir, "--config.model.nope=1"), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "train.py: unknown config key model.nope (--config.model.nope=1): model has arch, batch_norm,"
    )
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("checkpoint_every", 0, "a positive integer"),
        ("num_steps", 0, "a positive integer"),
        ("max_checkpoints_to_keep", 0, "a positive integer"),
        ("checkpoint_every_minutes", -1.0, "a number >= 0"),
    ],
)
def test_bad_train_keys_are_named_before_any_work(smoke_data_dir, tmp_path, monkeypatch, key, value, expected):
    monkeypatch.setattr(loop, "build_task", lambda c: pytest.fail("the task was built"))
    with pytest.raises(ValueError, match=rf"^config key train.{key}={value!r}: expected {expected}"):
        loop.train(_smoke(smoke_data_dir, **{key: value}), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_help_exits_0_naming_overrides_and_configs():
    proc = run_python(["train.py", "--help"], check=False)
    assert proc.returncode == 0
    assert "--config.key=value" in proc.stdout and "configs/vqmae.py" in proc.stdout and "--workdir" in proc.stdout


def test_signal_constant_names_are_valid():
    assert getattr(signal, vqvae_audio.get_config("smoke").debug.simulate_signal) == signal.SIGKILL


def test_truncated_video_is_skipped_with_its_decoded_and_declared_length(tmp_path):
    """A 4 s MP4 with its index at the start, cut at 75 %, still opens and decodes 2.9 s: not a short clip."""
    import av

    from data_pipelines import media

    frames = np.random.default_rng(0).integers(0, 255, (100, 64, 64, 3), dtype=np.uint8)
    whole, cut = str(tmp_path / "whole.mp4"), str(tmp_path / "cut.mp4")
    with av.open(whole, "w", options={"movflags": "faststart"}) as out:  # the index (moov) before the data
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    with open(whole, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[: len(data) * 3 // 4])
    assert media.decode_video(whole, 25).shape == (100, 64, 64, 3)
    with pytest.raises(media.MediaError) as e:
        media.decode_video(cut, 25)
    assert e.value.reason.startswith("truncated: decoded 2.") and " of 4.00 s" in e.value.reason


def _write_tokenizer(workdir, module, variant, seed):
    """A tokenizer run with freshly initialised weights (what it encodes does not matter here)."""
    config = module.get_config(variant)
    task = build_task(config)
    variables = jax.jit(task.init_variables)(jax.random.key(seed), task.dummy_batch())
    shutil.rmtree(workdir, ignore_errors=True)
    return runs.write_run(str(workdir), config, jax.device_get(variables))


def _stage2_config(data_dir, audio, visual):
    from configs import vqmdvae

    config = vqmdvae.get_config("smoke")
    config.data.data_dir = data_dir
    config.tokenizers.audio, config.tokenizers.visual = str(audio), str(visual)
    return config


def test_feature_cache_is_keyed_on_tokenizer_content(smoke_data_dir, tmp_path):
    """A tokenizer retrained into the same directory (same path, same step) invalidates the cache."""
    from avrep.features.cache import build_feature_cache
    from avrep.features.tokenizers import FrozenTokenizers
    from configs import vqvae_visual

    audio = _write_tokenizer(tmp_path / "audio", vqvae_audio, "smoke", 0)
    visual = _write_tokenizer(tmp_path / "visual", vqvae_visual, "smoke", 0)
    config = _stage2_config(smoke_data_dir, audio, visual)
    source = sources.open_source(config.data.name, "test", smoke_data_dir)
    messages = []

    def build():
        cache = build_feature_cache(
            str(tmp_path / "cache"), FrozenTokenizers(config), source, min_frames=1, log=messages.append
        )
        return np.asarray(cache[0]["x_audio"])

    first = build()
    again = build()
    _write_tokenizer(tmp_path / "audio", vqvae_audio, "smoke", 1)  # "retrained": other weights, same step
    rebuilt = build()
    assert "built" in messages[0] and "reused" in messages[1], messages
    assert "stale (changed: tokenizers)" in messages[2] and "built" in messages[3], messages
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, rebuilt)


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_tokenizer_of_another_setting_is_refused_before_any_work(tmp_path, modality):
    from avrep.features.tokenizers import FrozenTokenizers
    from configs import vqvae_visual

    dummy = {"params": {"w": np.zeros(1, np.float32)}}  # the check reads the config only
    module = vqvae_audio if modality == "audio" else vqvae_visual
    other = runs.write_run(str(tmp_path / modality), module.get_config("vqmae,smoke"), dummy)
    paths = {"audio": tmp_path / "unused", "visual": tmp_path / "unused", modality: other}
    if modality == "visual":  # the audio tokenizer must pass its own check first
        paths["audio"] = runs.write_run(str(tmp_path / "audio"), vqvae_audio.get_config("smoke"), dummy)
    config = _stage2_config("", paths["audio"], paths["visual"])
    expected = "audio.hop=320, this run has audio.hop=533" if modality == "audio" else "data.image_size=96"
    with pytest.raises(ValueError, match=rf"^config key tokenizers.{modality}=.*trained with {expected}"):
        FrozenTokenizers(config)


def test_load_checkpoint_is_quiet(trained):
    workdir, _, _ = trained
    proc = run_python(["-c", f"import avrep; print(avrep.load_checkpoint({str(workdir)!r}).step)"])
    assert proc.stdout.strip() == "8" and "WARNING" not in proc.stderr and proc.stderr.strip() == "", proc.stderr


def test_fine_tuning_with_an_empty_pretrained_names_that_key():
    from configs import vqmae_finetune

    config = vqmae_finetune.get_config("smoke")
    config.finetune.pretrained = ""
    with pytest.raises(ValueError, match=r"^config key finetune.pretrained is empty: expected the run directory"):
        build_task(config)
