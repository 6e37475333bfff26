"""evaluate.py on a run whose model outputs NaN: the utterances are named (a warning, a manifest line) and left
out of the table's means, instead of crashing inside a metric such as PESQ."""

import csv
import math

import jax
import numpy as np
import pytest

from avrep import runs
from avrep.evaluation import metrics
from avrep.evaluation.runner import NONFINITE_FILE, evaluate_workdir
from avrep.tasks import build_task
from configs import vqvae_audio, vqvae_visual


def _write_run(path, module, data_dir):
    """A tokenizer run with freshly initialised weights and one decoder kernel NaN."""
    config = module.get_config("smoke")
    config.data.data_dir = data_dir
    task = build_task(config)
    variables = jax.device_get(jax.jit(task.init_variables)(jax.random.key(0), task.dummy_batch()))
    kernel = variables["params"]["decoder"]["Conv_0"]["kernel"]
    variables["params"]["decoder"]["Conv_0"]["kernel"] = np.full_like(kernel, np.nan)
    runs.write_run(str(path), config, variables)


def test_pesq_itself_fails_on_a_nan_estimate():
    """What evaluate.py hit before: PESQ raises on a NaN output (STOI and SI-SDR return NaN)."""
    reference = np.sin(np.arange(16000) * 0.05).astype(np.float32)
    with pytest.raises(ValueError, match="cannot convert float NaN to integer"):
        metrics.audio_metrics(reference, np.full_like(reference, np.nan), names=("pesq",))


def test_nonfinite_outputs_are_named_by_run_and_utterance_and_left_out(smoke_data_dir, tmp_path):
    workdir = tmp_path / "runs"
    _write_run(workdir / "audio_nan", vqvae_audio, smoke_data_dir)
    _write_run(workdir / "visual_nan", vqvae_visual, smoke_data_dir)
    messages = []
    written = evaluate_workdir(str(workdir), log=messages.append, limit=2, griffin_lim_iters=2)

    warnings = [m for m in messages if "WARNING" in m]
    # Both model conditions of the NaN audio run (original phase, Griffin-Lim), and the visual run.
    assert len(warnings) == 3, messages
    assert all("non-finite model output for 2 of 2 test utterance(s)" in w for w in warnings), warnings
    assert any(w.startswith("[avrep] WARNING audio_nan (VQ-VAE-audio, original phase)") for w in warnings)
    assert any(w.startswith("[avrep] WARNING visual_nan (VQ-VAE-visual, -)") for w in warnings)

    with open(written["nonfinite_outputs"]) as f:
        listed = list(csv.DictReader(f))
    assert written["nonfinite_outputs"].endswith(NONFINITE_FILE) and len(listed) == 6
    assert {r["run"] for r in listed} == {"audio_nan", "visual_nan"}
    utterances = {r["utterance"] for r in listed}
    assert len(utterances) == 2 and not utterances & {"0", "1"}  # the records' ids, not their positions

    with open(written["analysis_resynthesis_audio"][1]) as f:
        audio = {(r["run"], r["condition"]): r for r in csv.DictReader(f)}
    assert audio[("audio_nan", "original phase")]["pesq"] == "nan"  # no finite utterance left
    reference = next(r for (_, condition), r in audio.items() if condition.startswith("reference"))
    assert math.isfinite(float(reference["pesq"]))  # the rows the model did not make are scored as before
    with open(written["analysis_resynthesis_audio"][0]) as f:
        assert "nan (2 non-finite excluded)" in f.read()
