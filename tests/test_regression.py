"""The default pipeline's smoke variant, trained from scratch, reproduces a stored digest of its parameters
and training metrics: refactors must not change what avrep computes.

Bitwise equality holds for one JAX build on one CPU model (XLA's CPU kernels differ between instruction sets
and releases); elsewhere the test compares every parameter's sum and every logged metric to the stored
values within 1e-4 (relative), which still catches any change to the models, losses, data or seeds.
Regenerate the fixture after an intended change with ``python tests/test_regression.py W`` (W: a workdir
trained with ``python train.py --workdir W --variant smoke``).
"""

import hashlib
import json
import os
import platform
import sys

import numpy as np
import pytest
from conftest import run_python

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "smoke_pipeline_digest.json")
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


def test_smoke_pipeline_reproduces_stored_digest(tmp_path):
    with open(FIXTURE) as f:
        expected = json.load(f)
    workdir = str(tmp_path / "smoke")
    run_python(["train.py", "--workdir", workdir, "--variant", "smoke"], devices=1, timeout=900)
    got = summarize(workdir)
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


if __name__ == "__main__":
    summary = summarize(sys.argv[1])
    with open(FIXTURE, "w") as f:
        json.dump({"environment": _environment(), **summary}, f, indent=1, sort_keys=True)
    print(summary["digest"])
