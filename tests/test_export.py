"""Cross-platform compile checks: every family's real training step, at the papers' sizes, lowered and exported
with ``jax.export`` for CUDA and TPU from this CPU (abstract shapes only: no data, no CPU compile), holds no host
round-trip (host callback, infeed / outfeed, send / recv) and no custom call that only CPU accepts. And the
attention kernel by platform (avrep.nn.attention): the CPU loop, ``jax.nn.dot_product_attention`` elsewhere,
and the batched form agree.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_python
from jax import export

from avrep.nn import attention
from avrep.tasks import build_task
from avrep.training import step as step_lib
from avrep.training.optimizer import make_optimizer
from benchmarks.run import _audio_config, _random_tokenizers, _stage2_config, _visual_config, _vqmae_config
from configs import dvae, vqmae_finetune

PLATFORMS = ("cuda", "tpu")
# Operations that move data between device and host inside a step.
HOST_OPS = ("stablehlo.infeed", "stablehlo.outfeed", "stablehlo.send", "stablehlo.recv")
# Custom-call targets that XLA's GPU and TPU backends accept (sharding annotations).
PORTABLE_TARGETS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}


def _finetune_config():
    c = vqmae_finetune.get_config("paper,scratch")  # the thesis's encoder, Query2Emo head, batch 8
    return c


def _dvae_config(kind):
    return dvae.get_config(f"{kind},paper")  # batch 128 x 50 frames x 513 bins


# name -> the benchmark's paper-sized config (benchmarks/run.py), dtype as the accelerators' default
CASES = {
    "vqvae_audio": _audio_config,  # 1024 frames, the authors' batch
    "vqvae_visual": _visual_config,  # 256 images of 64 x 64
    "vqmdvae_stage2": lambda: _stage2_config(1024),  # the authors' batch, T = 30
    "vqmae_av": lambda: _vqmae_config("av", 128),  # width 320, 12 / 4 blocks, 2 s clips, batch 128
    "vqmae_s": lambda: _vqmae_config("audio", 128, mask_unit="frame", mask_ratio=0.8),
    "vqmae_finetune": _finetune_config,
    **{f"dvae_{kind}": (lambda kind=kind: _dvae_config(kind)) for kind in ("vae", "dkf", "storn", "vrnn", "srnn")},
    **{f"dvae_{kind}": (lambda kind=kind: _dvae_config(kind)) for kind in ("rvae", "dsae")},
}


@pytest.fixture(scope="module")
def tokenizer_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("random_tokenizers"))


def _abstract_step_inputs(task, tx):
    """Shape structs of (state, batch, rng) of the task's training step: nothing is computed."""

    def init(rng):
        variables = task.init_variables(rng, task.dummy_batch())
        params = variables["params"]
        return {
            "step": jnp.int32(0),
            "params": params,
            "model_state": {k: v for k, v in variables.items() if k != "params"},
            "opt_state": tx.init(params),
        }

    rng = jax.eval_shape(lambda: jax.random.key(0))
    n = task.pipeline.examples_per_batch
    batch = {k: jax.ShapeDtypeStruct((n, *np.shape(v)[1:]), np.asarray(v).dtype) for k, v in task.dummy_batch().items()}
    for label in task.pipeline.labels:
        batch[label] = jax.ShapeDtypeStruct((n,), jnp.int32)
    return jax.eval_shape(init, rng), batch, rng


def exported_step(config, platforms=PLATFORMS) -> export.Exported:
    task = build_task(config)
    tx, schedule = make_optimizer(config.optimizer, 1000)
    tx = task.optimizer(tx)
    step = jax.jit(step_lib.make_train_step(task, tx, schedule))
    return export.export(step, platforms=platforms)(*_abstract_step_inputs(task, tx))


def host_round_trips(mlir: str) -> list[str]:
    """Host transfers and CPU-only or unknown custom calls in a StableHLO module's text."""
    found = [op for op in HOST_OPS if op in mlir]
    targets = set(re.findall(r"stablehlo\.custom_call @([\w.]+)", mlir))
    targets |= set(re.findall(r"call_target_name = \"([\w.]+)\"", mlir))
    found += sorted(t for t in targets if t not in PORTABLE_TARGETS)
    return found


def test_a_host_callback_fails_the_export_and_the_text_check():
    def step(x):
        return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x) + 1

    x = jax.ShapeDtypeStruct((4,), jnp.float32)
    with pytest.raises(NotImplementedError, match="callback"):  # JAX refuses to export one at all
        export.export(jax.jit(step), platforms=PLATFORMS)(x)
    mlir = jax.jit(step).lower(x).as_text()
    assert any("callback" in t for t in host_round_trips(mlir)), mlir[:2000]


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_step_exports_for_gpu_and_tpu_without_host_round_trips(name, tokenizer_root):
    config = CASES[name]()
    if "tokenizers" in config:
        _random_tokenizers(config, tokenizer_root)
    config.model.dtype = "bfloat16"  # "auto" on an accelerator; float32 holds no other construct
    exported = exported_step(config)
    assert exported.platforms == PLATFORMS
    mlir = exported.mlir_module()
    assert host_round_trips(mlir) == []
    assert "bf16" in mlir and "f64" not in mlir  # computes in bfloat16; no double precision on TPU


# ------------------------------------------------------------------------------------------- attention


def _attention_inputs(seed=0, g=6, n_q=9, n_k=11, d=8):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((g, n, d)), jnp.float32) for n in (n_q, n_k, n_k))
    mask = rng.random((g, 1, n_k)) > 0.3
    mask[0] = False  # an all-masked row: uniform weights, no gradient to its scores (flax's behaviour)
    return q / np.sqrt(d), k, v, jnp.asarray(mask)


CORES = {
    "cpu_loop": attention._attention_core_looped,
    "accelerator": attention._attention_core_accelerator,
    "batched": attention._attention_core_batched,
}


@pytest.mark.parametrize("masked", [True, False])
def test_attention_cores_agree_in_value_and_gradient(masked):
    q, k, v, mask = _attention_inputs()
    mask = mask if masked else None
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape[:2] + (v.shape[-1],)), jnp.float32)
    results = {}
    for name, core in CORES.items():
        out, vjp = jax.vjp(lambda q, k, v, core=core: core(q, k, v, mask), q, k, v)
        results[name] = (out, *vjp(cotangent))
    for name in ("accelerator", "batched"):
        for got, want in zip(results[name], results["cpu_loop"]):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=name)


def _attention_layer_mlir(platform):
    layer = attention.Attention(num_heads=2)
    x = jax.ShapeDtypeStruct((2, 7, 8), jnp.float32)
    params = jax.eval_shape(layer.init, jax.random.key(0), x)

    def loss(params, x):
        return jnp.sum(layer.apply(params, x) ** 2)

    return jax.jit(jax.grad(loss)).trace(params, x).lower(lowering_platforms=(platform,)).as_text()


def test_attention_kernel_is_picked_by_the_platform_the_step_is_lowered_for():
    # CPU: the (example, head) loop (a while loop); GPU / TPU: dot_product_attention's batched einsums, no loop.
    assert "stablehlo.while" in _attention_layer_mlir("cpu")
    for platform in PLATFORMS:
        mlir = _attention_layer_mlir(platform)
        assert "stablehlo.while" not in mlir and "dot_general" in mlir, platform


# ------------------------------------------------------------------------------------------- device benchmark

BLOCK_DATA_PACKAGES = """
import runpy, sys
BLOCKED = ("grain", "tensorflow_datasets", "array_record", "librosa")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
sys.argv = ["benchmarks/device.py", *sys.argv[1:]]
runpy.run_path("benchmarks/device.py", run_name="__main__")
"""


def test_device_benchmark_runs_without_the_data_packages(tmp_path):
    # The accelerator image lacks Grain, TFDS, ArrayRecord and librosa: the command must not import them.
    out = tmp_path / "device.jsonl"
    args = ["--tiny", "--only", "dvae_vae", "--dtypes", "float32", "--out", str(out), "--work_dir", str(tmp_path)]
    run_python(["-c", BLOCK_DATA_PACKAGES, *args])
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["name"] == "dvae_vae" and line["dtype"] == "float32" and line["input_wait"] == 0.0
    assert 0 < line["mfu"] < 1.5 and line["compile_s"] > 0 and line["step_memory_mb"] > 0
