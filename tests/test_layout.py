"""The house rules, checked: imports point down, loading a run needs neither Grain nor TFDS, runs written
before the one-schema configs still load."""

import ast
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, run_python

PACKAGES = ("avrep", "data_pipelines")
# What each part of the tree may import from the project (prefixes of module names); anything else is an
# upward or sideways import. Entry points (train.py, evaluate.py, benchmarks/) may import anything.
MODEL_LAYER = ("avrep.models", "avrep.nn", "avrep.audio")
FEATURE_LAYER = ("avrep.features", *MODEL_LAYER, "avrep.runs", "data_pipelines.spec")
TASK_LAYER = ("avrep.tasks", *FEATURE_LAYER, "data_pipelines.sources")
ALLOWED = {
    "avrep.nn": ("avrep.nn",),
    "avrep.models": MODEL_LAYER,
    "avrep.audio": (),
    "avrep.runs": (),
    "avrep.features": FEATURE_LAYER,
    "avrep.tasks": TASK_LAYER,
    "avrep.convert": ("avrep.convert", *TASK_LAYER),  # foreign weights -> avrep runs
    "avrep.training": ("avrep.training", *TASK_LAYER, "data_pipelines"),
    "avrep.evaluation": ("avrep.evaluation", *TASK_LAYER, "data_pipelines"),
    "avrep": ("avrep.tasks",),  # the package's load_checkpoint
    "data_pipelines": ("data_pipelines", "avrep.audio"),
}


def _modules() -> dict[str, str]:
    """{module name: file} of every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
                    found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(root, f)
    return found


def _imports(modules: dict[str, str]) -> dict[str, set[str]]:
    """{module: project modules it imports}, deferred (function-level) imports included."""
    graph = {}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                for a in node.names:  # "from pkg import module" imports the submodule
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _rule(module: str) -> tuple[str, ...]:
    key = max((k for k in ALLOWED if module == k or module.startswith(k + ".")), key=len)
    return ALLOWED[key]


def test_imports_point_down_without_cycles():
    modules = _modules()
    assert {
        "avrep.runs",
        "avrep.nn.attention",
        "avrep.tasks",
        "avrep.features.tokenizers",
        "data_pipelines.spec",
    } <= set(modules)
    graph = _imports(modules)
    assert _cycles(graph) == []
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if not any(t == p or t.startswith(p + ".") for p in _rule(m))
    )
    assert wrong == []


def test_the_import_check_sees_deferred_imports_and_cycles():
    graph = _imports(_modules())
    assert "avrep.tasks" in graph["avrep"]  # the package's deferred import inside load_checkpoint
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_too_long():
    long = {m: n for m, p in _modules().items() if m.startswith("avrep") and (n := len(open(p).readlines())) > 820}
    assert long == {}


def test_loading_a_run_needs_neither_grain_nor_tfds():
    proc = run_python(
        [
            "-c",
            "import sys, avrep; avrep.load_checkpoint; import avrep.tasks; "
            "print('grain' in sys.modules, 'tensorflow_datasets' in sys.modules)",
        ]
    )
    assert proc.stdout.strip() == "False False"


def test_a_run_written_before_the_config_schema_change_loads(tmp_path):
    """A VQ-VAE run trained before the redesign (loss options under ``model``) loads and runs."""
    import orbax.checkpoint as ocp

    import avrep

    run = tmp_path / "old"
    shutil.copytree(os.path.join(REPO, "tests", "data", "pre_redesign_vqvae_audio"), run)
    model = avrep.load_checkpoint(run)
    assert model.step == 12 and model.task.display_name == "VQ-VAE-audio"
    assert model.config.loss.recon_loss == "itakura_saito" and "recon_loss" not in model.config.model
    assert model.config.debug.log_batch_digest is False and "log_batch_digest" not in model.config.train
    stored = ocp.StandardCheckpointer().restore(run / "checkpoints" / "12" / "variables")
    for got, want in zip(*(map(np.asarray, __import__("jax").tree.leaves(t)) for t in (model.variables, stored))):
        np.testing.assert_array_equal(got, want)
    power = np.exp(np.random.default_rng(0).standard_normal((3, 513))).astype(np.float32)
    out = model.apply_fn(model.variables, power)
    assert out["log_recon"].shape == (3, 513) and np.all(np.isfinite(out["log_recon"]))


def test_upgrade_config_moves_every_old_key():
    import ml_collections

    from avrep.runs import upgrade_config

    old = ml_collections.ConfigDict(
        {
            "task": "mdvae",
            "features": "raw",
            "feature_scaling": "modality",
            "pretrained": "/runs/pre",
            "model": {"recon_loss": "mse", "ssim_weight": 0.05, "num_codes": 8},
            "finetune": {"fold": 2},
            "train": {"num_steps": 5, "log_batch_digest": True, "simulate_preemption_at_step": 3},
        }
    )
    new = upgrade_config(old).to_dict()
    assert new["features"] == {"kind": "raw", "scaling": "modality"}
    assert new["loss"] == {"recon_loss": "mse", "ssim_weight": 0.05} and new["model"] == {"num_codes": 8}
    assert new["finetune"] == {"fold": 2, "pretrained": "/runs/pre"} and "pretrained" not in new
    assert new["train"] == {"num_steps": 5}
    assert new["debug"] == {"log_batch_digest": True, "simulate_preemption_at_step": 3}
    assert upgrade_config(new).to_dict() == new  # today's configs pass unchanged


@pytest.mark.parametrize("layout", ["run", "checkpoints", "step"])
def test_write_run_makes_a_loadable_run(tmp_path, layout):
    """``avrep.runs.write_run`` (weight import, benchmarks) writes a run that ``load_checkpoint`` reads."""
    import jax

    import avrep
    from avrep.runs import write_run
    from avrep.tasks import build_task
    from configs import vqvae_audio

    config = vqvae_audio.get_config("smoke")
    task = build_task(config)
    variables = task.init_variables(jax.random.key(3), task.dummy_batch())
    run = write_run(str(tmp_path / "imported"), config, variables, step=7)
    path = {"run": run, "checkpoints": os.path.join(run, "checkpoints"), "step": os.path.join(run, "checkpoints", "7")}[
        layout
    ]
    model = avrep.load_checkpoint(path)
    assert model.step == 7
    for a, b in zip(jax.tree.leaves(model.variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
