"""The default pipeline (`python train.py --workdir W`) on smoke configs, trained once for this module: it
reproduces a stored digest of its parameters and training metrics (refactors must not change what avrep
computes), and `evaluate.py` writes every table from it.

Bitwise equality of the digest holds for one JAX build on one CPU model (XLA's CPU kernels differ between
instruction sets and releases); elsewhere the test compares every parameter's sum and every logged metric to the
stored values within 1e-4 (relative), which still catches any change to the models, losses, data or seeds.
Regenerate the fixture after an intended change with ``python tests/test_evaluate.py W`` (W: a workdir trained
with ``python train.py --workdir W --variant smoke``).
"""

import csv
import hashlib
import json
import math
import os
import platform
import shutil
import sys

import numpy as np
import pytest
from conftest import run_python

AUDIO_METRICS = ("stoi", "pesq", "si_sdr")
VISUAL_METRICS = ("mse", "psnr", "scc", "ssim")

DIGEST = os.path.join(os.path.dirname(__file__), "data", "smoke_pipeline_digest.json")
STAGES = ("vqvae_audio", "vqvae_visual", "vqmdvae")
VOLATILE_METRICS = ("train/steps_per_second", "train/input_wait")  # wall-clock, not computed values


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _environment() -> dict:
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": _cpu_model()}


def _final_variables(run_dir: str) -> dict:
    """The last checkpoint's variables as {path: array}, read with Orbax alone (no avrep code)."""
    import orbax.checkpoint as ocp

    directory = os.path.join(run_dir, "checkpoints")
    step = max(int(d) for d in os.listdir(directory) if d.isdigit())
    tree = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "variables"))
    flat = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k in sorted(node):
                walk(f"{prefix}/{k}", node[k])
        else:
            flat[prefix] = np.asarray(node)

    walk("", tree)
    return flat


def _metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in row.items() if k not in VOLATILE_METRICS} for row in rows]


def summarize(workdir: str) -> dict:
    """{"digest": sha256 over every stage's variables and metrics, "param_sums", "metrics"}."""
    h = hashlib.sha256()
    param_sums, metrics = {}, {}
    for stage in STAGES:
        run_dir = os.path.join(workdir, stage)
        for path, value in _final_variables(run_dir).items():
            h.update(f"{stage}{path}{value.dtype}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
            param_sums[f"{stage}{path}"] = float(np.sum(value, dtype=np.float64))
        metrics[stage] = _metrics(run_dir)
        h.update(json.dumps(metrics[stage], sort_keys=True).encode())
    return {"digest": h.hexdigest(), "param_sums": param_sums, "metrics": metrics}


@pytest.fixture(scope="module")
def smoke_run(smoke_data_dir, tmp_path_factory):
    """W after `train.py --workdir W --variant smoke` (one device, so the digest is the stored one's), run twice:
    the second run finds every stage finished."""
    workdir = tmp_path_factory.mktemp("default_pipeline") / "run"
    shutil.copytree(smoke_data_dir, workdir / "data")  # the pipeline's data_dir is W/data
    run_python(["train.py", "--workdir", str(workdir), "--variant", "smoke"], devices=1, timeout=900)
    for stage, steps in (("vqvae_audio", 12), ("vqvae_visual", 12), ("vqmdvae", 8)):
        assert os.path.isdir(workdir / stage / "checkpoints" / str(steps)), stage
    again = run_python(["train.py", "--workdir", str(workdir), "--variant", "smoke"])
    assert "Traceback" not in again.stderr  # finished stages resume at their last step and stop
    return workdir


def test_smoke_pipeline_reproduces_stored_digest(smoke_run):
    with open(DIGEST) as f:
        expected = json.load(f)
    got = summarize(str(smoke_run))
    if _environment() == expected["environment"]:
        assert got["digest"] == expected["digest"], "same JAX build and CPU: parameters or metrics changed"
        return
    assert sorted(got["param_sums"]) == sorted(expected["param_sums"])
    for key, value in expected["param_sums"].items():
        assert got["param_sums"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for stage, rows in expected["metrics"].items():
        assert len(got["metrics"][stage]) == len(rows), stage
        for row, want in zip(got["metrics"][stage], rows):
            assert row.keys() == want.keys(), stage
            for k, v in want.items():
                assert row[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (stage, row["step"], k)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_default_pipeline_smoke_writes_finite_tables(smoke_run):
    workdir = smoke_run
    run_python(
        [
            "evaluate.py",
            "--workdir",
            str(workdir),
            "--limit",
            "2",
            "--griffin_lim_iters",
            "4",
            "--swap_count",
            "3",
            "--denoise_count",
            "2",
        ]
    )
    audio = _rows(workdir / "eval" / "analysis_resynthesis_audio.csv")
    visual = _rows(workdir / "eval" / "analysis_resynthesis_visual.csv")
    assert {(r["model"], r["condition"]) for r in audio} == {
        ("VQ-VAE-audio", "original phase"),
        ("VQ-VAE-audio", "Griffin-Lim (4 it.)"),
        ("original signal", "reference: original power, Griffin-Lim (4 it.)"),
        ("VQ-MDVAE", "original phase"),
    }
    assert [r["model"] for r in visual] == ["VQ-VAE-visual", "VQ-MDVAE"]
    for rows, metrics in ((audio, AUDIO_METRICS), (visual, VISUAL_METRICS)):
        for row in rows:
            assert row["n"] == "2"
            for m in metrics:
                assert math.isfinite(float(row[m])) and math.isfinite(float(row[f"{m}_std"])), (row, m)
    # Sanity of the numbers themselves, not just finiteness.
    ref = next(r for r in audio if r["model"] == "original signal")
    assert 0.0 < float(ref["stoi"]) <= 1.0 and 1.0 <= float(ref["pesq"]) <= 4.65
    assert 0.0 < float(visual[0]["mse"]) < 0.25 and float(visual[0]["ssim"]) <= 1.0
    with open(workdir / "eval" / "analysis_resynthesis_visual.md") as f:
        assert "| VQ-VAE-visual | - | vqvae_visual | 2 |" in f.read()
    assert os.path.getsize(workdir / "eval" / "vqvae_audio_spectrograms.png") > 10_000
    assert os.path.getsize(workdir / "eval" / "vqvae_visual_faces.png") > 10_000

    # The MDVAE experiments: transformation (one row per swapped latent), denoising, emotion, figures.
    swaps = _rows(workdir / "eval" / "analysis_transformation_synthesis.csv")
    assert [r["latent"] for r in swaps] == ["none", "w", "z_av", "z_a", "z_v"]
    denoise = _rows(workdir / "eval" / "denoising.csv")
    assert {r["model"] for r in denoise} == {"VQ-VAE-visual", "VQ-MDVAE"}
    assert {r["region"] for r in denoise} == {"mouth", "eyes"}
    assert all(math.isfinite(float(r["psnr"])) for r in denoise)
    emotion = _rows(workdir / "eval" / "emotion.csv")
    assert list(emotion[0])[:6] == ["setting", "classifier", "representation", "task", "accuracy", "f1"]
    assert {r["representation"] for r in emotion} == {"VQ-MDVAE w"}
    for name in ("vqmdvae_interpolation.png", "vqmdvae_generation.png", "vqmdvae_generation.wav"):
        assert os.path.getsize(workdir / "eval" / name) > 5_000, name


def test_evaluate_names_a_missing_workdir(tmp_path):
    proc = run_python(["evaluate.py", "--workdir", str(tmp_path / "absent")], check=False)
    assert proc.returncode != 0 and f"--workdir {tmp_path / 'absent'} does not exist" in proc.stderr


if __name__ == "__main__":
    summary = summarize(sys.argv[1])
    with open(DIGEST, "w") as f:
        json.dump({"environment": _environment(), **summary}, f, indent=1, sort_keys=True)
    print(summary["digest"])
