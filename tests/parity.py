"""Shared by the parity tests: where the golden files of the authors' models are (computed by their own
PyTorch classes; see the parity folder's README) and how close avrep must come to them."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import REPO

PARITY_DIR = os.environ.get("AVREP_PARITY_DIR") or os.path.join(REPO, "..", "shared", "parity")
# An array passes if max |ours - theirs| <= FLOOR_MULTIPLE * (their float32-vs-float64 difference)
# + ULPS float32 ulps of its largest magnitude.
FLOOR_MULTIPLE, ULPS = 10.0, 4.0


def parity_dir(fixture: str) -> str:
    """The folder of one golden fixture (e.g. ``"dvae/SRNN"``); skips the test when it is absent."""
    path = os.path.join(PARITY_DIR, fixture)
    if not os.path.isdir(path):
        pytest.skip(f"parity goldens not found: {os.path.abspath(path)} (set AVREP_PARITY_DIR)")
    return path


def load_fixture(fixture: str) -> tuple[str, dict, dict, dict]:
    """(folder, meta.json, inputs, outputs) of a fixture (skipped when absent)."""
    path = parity_dir(fixture)
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    inputs = dict(np.load(os.path.join(path, "inputs.npz"), allow_pickle=False))
    outputs = dict(np.load(os.path.join(path, "outputs.npz"), allow_pickle=False))
    return path, meta, inputs, outputs


def tolerance(floor: dict) -> float:
    """The allowed max |diff| of an array with ``meta.json`` noise-floor entry ``floor``."""
    return FLOOR_MULTIPLE * floor["max_abs_fp32_vs_fp64"] + ULPS * np.finfo(np.float32).eps * floor["max_abs_value"]


def max_abs_diff(ours, want) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(want, np.float64))))


def torch_state_dict(params):
    """Flax params -> a torch-named state_dict (the inverse of the converter's mapping)."""
    sd = {}
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [p.key for p in path]
        leaf = names[-1]
        if leaf == "kernel":
            sd[".".join(names[:-1] + ["weight"])] = np.asarray(value).T
        elif leaf.startswith(("weight_", "bias_")):
            reverse = leaf.endswith("_reverse")
            torch_leaf = leaf.removesuffix("_reverse") + "_l0" + ("_reverse" if reverse else "")
            sd[".".join(names[:-1] + [torch_leaf])] = np.asarray(value)
        else:
            sd[".".join(names)] = np.asarray(value)
    return sd
