"""The DVAE family as a training task: speech windows in, Itakura-Saito + KL out; validation, early stopping,
the DVAE pipeline and its analysis-resynthesis table."""

import csv
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SPEECH_SMOKE_DATASET, run_python

from avrep import load_checkpoint, runs
from avrep.tasks import build_task
from avrep.training import loop
from configs import dvae, dvae_pipeline
from data_pipelines import pipelines, sources

SPEECH_SMOKE = SPEECH_SMOKE_DATASET


@pytest.fixture(scope="module")
def speech_data_dir(speech_smoke_data_dir):
    return speech_smoke_data_dir


def _config(kind, data_dir):
    config = dvae.get_config(f"{kind},smoke")
    config.data.data_dir = data_dir
    return config


@pytest.mark.parametrize("kind", list(dvae.MODELS))
def test_every_model_builds_and_its_loss_is_the_negative_elbo_per_frame(speech_data_dir, kind):
    config = _config(kind, speech_data_dir)
    task = build_task(config)
    source = sources.open_source(config.data.name, "train", speech_data_dir)
    batch = next(pipelines.training_iterator(source, task.pipeline, task.framing, seed=0))
    x = task.features(batch)
    assert x.shape == (8, 50, 513) and float(jnp.min(x)) >= 0.0
    variables = task.init_variables(jax.random.key(0), batch)
    params = variables.pop("params")
    late = jnp.int32(10_000)  # full KL weight and, for the SRNN (SS), its own predictions fed back
    loss, (metrics, _) = task.loss(params, variables, batch, jax.random.key(1), late)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), float(metrics["recon"] + metrics["kl"]), rtol=1e-5)
    assert float(metrics["recon"]) > 0 and float(metrics["kl"]) >= 0
    early, (m0, _) = task.loss(params, variables, batch, jax.random.key(1), jnp.int32(0))
    assert float(m0["kl_weight"]) == 0.0 and float(early) == pytest.approx(float(m0["recon"]), rel=1e-6)
    if kind == "srnn":
        assert float(m0["use_pred"]) == 0.0 and float(metrics["use_pred"]) == 1.0


@pytest.mark.parametrize("kind", ["dkf", "rvae", "srnn_tf"])
def test_a_fresh_decoder_starts_at_the_training_data_mean_spectrum(speech_data_dir, kind):
    """train.output_bias_utterances: the output log-variance bias is the log mean power per bin of the first
    n training utterances, which fits the data far better than the zero bias (variance 1) it replaces."""
    from avrep import audio
    from data_pipelines.spec import speech_utterances

    config = _config(kind, speech_data_dir)
    config.train.output_bias_utterances = 3
    task = build_task(config)
    source = sources.open_source(config.data.name, "train", speech_data_dir)
    batch = next(pipelines.training_iterator(source, task.pipeline, task.framing, seed=0))
    fresh = task.init_variables(jax.random.key(0), batch)
    bias = np.asarray(task.warm_start(fresh)["params"]["gen_logvar"]["bias"])
    spectra = [
        audio.power_spectrogram(u["wav"], n_fft=1024, hop=256, window="sine", center=True, pad_mode="reflect")
        for _, u in zip(range(3), speech_utterances(source, 256))
    ]
    expected = np.log(np.concatenate([np.asarray(x, np.float64) for x in spectra]).mean(axis=0) + 1e-10)
    np.testing.assert_allclose(bias, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(bias) > 3.0  # a spectrum, not a constant

    x = np.asarray(task.features(batch), np.float64) + 1e-10
    itakura_saito = lambda log_v: float(np.mean(x * np.exp(-log_v) - np.log(x) + log_v - 1))
    assert itakura_saito(bias) < 0.5 * itakura_saito(np.zeros_like(bias))
    config.train.output_bias_utterances = 0  # the authors' initialisation: left as initialised
    untouched = build_task(config).warm_start(fresh)["params"]["gen_logvar"]["bias"]
    np.testing.assert_array_equal(np.asarray(untouched), np.asarray(fresh["params"]["gen_logvar"]["bias"]))


def test_schedules_warm_up_linearly_after_their_delay(speech_data_dir):
    task = build_task(_config("srnn", speech_data_dir))  # smoke: KL delay 2, over 4 steps; ss from 2 to 6
    kl = [float(task.kl_weight(jnp.int32(s))) for s in range(8)]
    assert kl == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75, 1, 1])
    assert [float(task.use_pred(jnp.int32(s))) for s in (0, 2, 4, 6, 9)] == pytest.approx([0, 0, 0.5, 1, 1])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model.x_dim", 257, r"x_dim=257 but audio.n_fft=1024 gives 513 bins"),
        ("model.preset", "dvae/LSTM", r"config key model.preset='dvae/LSTM'"),
        ("loss.ss_end", 1, r"config keys loss.ss_start / ss_end"),
    ],
)
def test_bad_configs_are_named(speech_data_dir, key, value, message):
    config = _config("srnn", speech_data_dir)
    block, field = key.split(".")
    config[block][field] = value
    with pytest.raises(ValueError, match=message):
        build_task(config)


def test_validation_picks_the_best_checkpoint_and_stops_early(speech_data_dir, tmp_path):
    config = _config("vae", speech_data_dir)
    config.train.update(num_steps=40, checkpoint_every=2, max_checkpoints_to_keep=10, early_stopping_patience=2)
    config.optimizer.learning_rate = 0.0  # the parameters never change: no validation improves on the first
    workdir = str(tmp_path / "run")
    last = loop.train(config, workdir)
    history = runs.validation_history(workdir)
    assert [s for s, _ in history] == list(range(2, last["step"] + 1, 2))
    losses = [v for _, v in history]
    assert last["step"] == 6 and losses[0] == losses[1] == losses[2]  # stopped after `patience` (2) more
    assert runs.best_step(workdir) == 2  # the earliest of equal losses
    again = loop.train(config, workdir)  # a finished (early-stopped) run does not train on
    assert again["step"] == last["step"]


def test_best_step_falls_back_to_the_latest_without_validation(tmp_path):
    from configs import vqvae_audio

    config = vqvae_audio.get_config("smoke")
    task = build_task(config)
    for step in (3, 5):
        runs.write_run(str(tmp_path), config, task.init_variables(jax.random.key(0), task.dummy_batch()), step)
    assert runs.best_step(str(tmp_path)) == 5
    with open(tmp_path / runs.METRICS_FILE, "w") as f:
        for step, loss in ((3, 1.0), (5, 2.0), (7, 0.5)):  # step 7 was not kept
            f.write(json.dumps({"step": step, "validation/loss": loss}) + "\n")
    assert runs.best_step(str(tmp_path)) == 3


def test_dvae_pipeline_smoke_writes_the_resynthesis_table(speech_data_dir, tmp_path):
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(speech_data_dir, workdir / "data")
    run_python(
        ["train.py", "--workdir", str(workdir), "--pipeline", "dvae", "--variant", "smoke", "--stages", "vae,srnn,dsae"]
    )
    run_python(["evaluate.py", "--workdir", str(workdir), "--limit", "3"])
    with open(workdir / "eval" / "dvae_analysis_resynthesis.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["condition"]) for r in rows} == {
        ("VAE", "teacher-forced"),
        ("SRNN (SS)", "teacher-forced"),
        ("SRNN (SS)", "generation mode"),
        ("DSAE", "teacher-forced"),
    }
    for row in rows:
        assert row["n"] == "3"
        for m in ("rmse", "si_sdr", "pesq", "estoi"):
            assert math.isfinite(float(row[m])), (row, m)
        assert 0 < float(row["rmse"]) < 1 and 1.0 <= float(row["pesq"]) <= 4.65 and 0 <= float(row["estoi"]) <= 1
    for run in ("vae", "srnn", "dsae"):
        assert os.path.getsize(workdir / "eval" / f"{run}_generation.png") > 5_000
    model = load_checkpoint(workdir / "srnn")
    assert model.task.display_name == "SRNN (SS)" and model.config.data.name == SPEECH_SMOKE
    assert [name for name, _, _ in dvae_pipeline.get_stages(str(workdir))] == list(dvae_pipeline.STAGES)
