"""The default pipeline (`python train.py --workdir W`) on smoke configs: train every default stage, evaluate,
read the tables."""

import csv
import math
import os
import shutil

from conftest import run_python

AUDIO_METRICS = ("stoi", "pesq", "si_sdr")
VISUAL_METRICS = ("mse", "psnr", "scc", "ssim")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_default_pipeline_smoke_writes_finite_tables(smoke_data_dir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_data_dir, workdir / "data")  # the pipeline's data_dir is W/data
    run_python(["train.py", "--workdir", str(workdir), "--variant", "smoke"], devices=2)
    for stage, steps in (("vqvae_audio", 12), ("vqvae_visual", 12), ("vqmdvae", 8)):
        assert os.path.isdir(workdir / stage / "checkpoints" / str(steps)), stage
    again = run_python(["train.py", "--workdir", str(workdir), "--variant", "smoke"])
    assert "Traceback" not in again.stderr  # finished stages resume at their last step and stop

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
