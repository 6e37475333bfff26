"""Test setup: 8 fake CPU devices (set before JAX is imported) and a tiny SynthAV built once."""

import os
import subprocess
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_DATASET = "synthav/mdvae_smoke"
SPEECH_SMOKE_DATASET = "synthav/speech_smoke"


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
    from data_pipelines import registry

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    registry.prepare(SMOKE_DATASET, data_dir)
    return data_dir


@pytest.fixture(scope="session")
def speech_smoke_data_dir(tmp_path_factory):
    """SynthAV's speech view (the DVAE family's built-in corpus), smoke size, built once."""
    from data_pipelines import registry

    data_dir = str(tmp_path_factory.mktemp("speech_tfds"))
    registry.prepare(SPEECH_SMOKE_DATASET, data_dir)
    return data_dir


def run_python(args, *, devices=1, env=None, timeout=600, check=True):
    """Runs ``python args`` from the repo root with ``devices`` fake CPU devices."""
    full_env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": REPO,
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
