"""Schedules stated in epochs (the `:paper` configs): the conversion to steps against the thesis's numbers, the
run-time conversion in the training loop, and the warm start from another run (config key train.init_from)."""

import json
import os

import jax
import numpy as np
import pytest

from avrep import runs
from avrep.tasks import build_task
from avrep.training import loop
from avrep.training.epochs import epochs_to_steps, resolve_epochs
from configs import vqmae, vqmae_finetune, vqmdvae, vqvae_audio, vqvae_visual
from data_pipelines.sources import open_source

# RAVDESS ([Sadok-thesis] Sec. 5.3.1): 24 actors x 60 audiovisual speech clips; 6 speaker folds leave 20 actors
# (1200 clips) to fine-tune on in the thesis, 17 (1020) in avrep's folds, which carve 3 validation actors out.
RAVDESS_TRAIN_CLIPS = 20 * 60


def test_epochs_to_steps_thesis_numbers():
    # Fine-tuning at the code's batch 8: 150 steps per epoch, so the thesis's 40 warm-up epochs are 6000 steps
    # (the old CPU-sized schedule's 300 steps were 2 epochs).
    assert epochs_to_steps(40, RAVDESS_TRAIN_CLIPS, 8) == 6000
    assert epochs_to_steps(2, RAVDESS_TRAIN_CLIPS, 8) == 300
    assert epochs_to_steps(40, 17 * 60, 8) == 5100
    # Batches run across epoch boundaries: a remainder carries over instead of being dropped per epoch.
    assert epochs_to_steps(3, 10, 4) == 8 and epochs_to_steps(1, 10, 4) == 3
    assert epochs_to_steps(0, 10, 4) == 0 and epochs_to_steps(0.01, 10, 4) == 1
    with pytest.raises(ValueError, match="positive sizes"):
        epochs_to_steps(1, 0, 4)


def test_paper_configs_resolve_to_the_thesis_schedules():
    # VQ-MAE-AV fine-tuning on RAVDESS: lr 1e-4, 40 warm-up epochs of 100 (ours), a checkpoint every 5 epochs.
    config, line = resolve_epochs(vqmae_finetune.get_config("ravdess,paper"), RAVDESS_TRAIN_CLIPS, 8)
    assert (config.train.num_steps, config.optimizer.warmup_steps, config.train.checkpoint_every) == (15000, 6000, 750)
    assert config.optimizer.learning_rate == 1e-4 and config.data.examples_per_batch == 8
    assert "150.0 steps per epoch" in line and "optimizer.warmup_steps=6000" in line
    # Pre-training at batch 128: 140 epochs, 100 of warm-up; the cosine's horizon is the run's unless given.
    config, _ = resolve_epochs(vqmae.get_config("paper"), 128 * 1000, 128)
    assert (config.train.num_steps, config.optimizer.warmup_steps) == (140_000, 100_000)
    assert config.optimizer.learning_rate == pytest.approx(1e-3 * 128 / 256)
    code_horizon = vqmae.get_config("paper")
    code_horizon.optimizer.decay_epochs = 800
    assert resolve_epochs(code_horizon, 128 * 1000, 128)[0].optimizer.decay_steps == 800_000
    # VQ-MDVAE: 1000 epochs at batch 1024, StepLR every 50 epochs (24 steps per epoch for 24 k utterances).
    config, _ = resolve_epochs(vqmdvae.get_config("paper"), 24 * 1024, 1024)
    assert (config.train.num_steps, config.optimizer.decay_every, config.optimizer.learning_rate) == (24000, 1200, 2e-5)
    # Tokenizers: 20 epochs of frames at 1024 frames per batch; the VQ-MAE visual one's epoch is 15000 iterations.
    audio = vqvae_audio.get_config("vqmae,paper")
    assert audio.data.examples_per_batch * audio.data.frames_per_example == 1024
    assert resolve_epochs(audio, 1024 * 500, 1024)[0].train.num_steps == 10_000
    assert resolve_epochs(vqvae_visual.get_config("vqmae,paper"), 123, 64)[0].train.num_steps == 20 * 15000


def test_epoch_and_step_keys_must_not_both_be_set():
    config = vqmae.get_config("paper")
    config.train.num_steps = 5000  # a step override on top of an epoch schedule
    with pytest.raises(ValueError, match="train.num_epochs=140 and train.num_steps=5000 are both set"):
        resolve_epochs(config, 1000, 128)
    config = vqmae.get_config("paper")
    config.train.num_epochs = -1.0
    with pytest.raises(ValueError, match="train.num_epochs=-1.0: expected a number of epochs >= 0"):
        loop.check_train_config(config)


def _smoke_tokenizer(data_dir, **train):
    config = vqvae_audio.get_config("smoke")
    config.data.data_dir = data_dir
    config.train.update(train)
    return config


def test_training_converts_epochs_at_run_time_and_warm_starts(smoke_data_dir, tmp_path):
    config = _smoke_tokenizer(smoke_data_dir)
    task = build_task(config)
    frames, batch = task.epoch_size(open_source(config.data.name, config.data.train_split, smoke_data_dir))
    assert batch == 8 * 4 and frames > 10 * batch  # every frame of the training utterances is an example
    # Three steps' worth of epochs, given in epochs only (the step keys cleared, as the :paper configs do).
    epochs = 3 * batch / frames
    config.train.update(num_epochs=epochs, num_steps=0, checkpoint_every_epochs=epochs, checkpoint_every=0)
    logs = []
    first = str(tmp_path / "first")
    assert loop.train(config, first, log=logs.append)["step"] == 3
    derived = [line for line in logs if "steps per epoch" in line]
    assert len(derived) == 1 and "train.num_steps=3" in derived[0] and f"{frames} examples per epoch" in derived[0]
    assert json.load(open(os.path.join(first, "config.json")))["train"]["num_steps"] == 3
    logs.clear()
    assert loop.train(config, first, log=logs.append)["step"] == 3  # finished: converted again, nothing trained
    assert any("nothing to do" in line for line in logs)

    # Warm start: a zero learning rate keeps the restored parameters, so they must equal the first run's exactly.
    second = _smoke_tokenizer(smoke_data_dir, num_steps=1, checkpoint_every=1, init_from=first)
    second.optimizer.learning_rate = 0.0
    logs.clear()
    loop.train(second, str(tmp_path / "second"), log=logs.append)
    assert any("parameters from" in line for line in logs)
    before, after = (
        jax.tree.map(np.asarray, runs.read_variables(str(p))["params"]) for p in (first, tmp_path / "second")
    )
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    fresh = build_task(second).init_variables(jax.random.key(0), task.dummy_batch())["params"]
    assert not jax.tree.all(jax.tree.map(np.array_equal, before, jax.tree.map(np.asarray, fresh)))

    other = vqvae_visual.get_config("smoke")  # another model: named, not silently mixed
    other.data.data_dir = smoke_data_dir
    other.train.update(num_steps=1, init_from=first)
    with pytest.raises(ValueError, match="train.init_from=.*differ from this model's"):
        loop.train(other, str(tmp_path / "third"), log=lambda _: None)
