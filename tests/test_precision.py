"""Mixed precision (config key ``model.dtype``, avrep.nn.precision) for every model family, on CPU: the bfloat16
step computes its matmuls and convolutions in bfloat16, its loss is within 1 % of the float32 loss, and a few
hundred bfloat16 steps train as float32's do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from avrep.nn import precision
from avrep.nn.attention import batched_attention
from avrep.tasks import build_task
from avrep.training import mesh as mesh_lib
from avrep.training import step as step_lib
from avrep.training.optimizer import make_optimizer
from benchmarks.run import _random_like_dummy_batch, _random_tokenizers
from configs import dvae, vqmae, vqmae_finetune, vqmdvae, vqvae_audio, vqvae_visual

LOSS_RTOL = 1e-2  # bfloat16 keeps 8 significant bits (relative rounding 2^-9); measured: <= 5e-4 of the loss
MIN_BF16_FLOP_FRACTION = 0.9  # of matmul / convolution FLOPs; the rest: VQ codebook distances (float32)

# name -> (config module, variant, needs random tokenizer runs)
FAMILIES = {
    "vqvae_audio": (vqvae_audio, "smoke", False),
    "vqvae_visual": (vqvae_visual, "smoke", False),
    "mdvae_raw": (vqmdvae, "smoke,raw", False),
    "vqmdvae": (vqmdvae, "smoke", True),
    "vqmae_av": (vqmae, "smoke", True),
    "vqmae_s": (vqmae, "smoke,audio", True),
    "vqmae_finetune": (vqmae_finetune, "smoke,scratch", True),
    **{
        f"dvae_{kind}": (dvae, f"{kind},smoke", False)
        for kind in ("vae", "dkf", "storn", "vrnn", "srnn", "rvae", "dsae")
    },
}


# Two cheap families in the default suite; every model under -m slow (bfloat16 is emulated on CPU, and the stage-2
# and VQ-MAE cases build random tokenizer runs: 2 CPU-minutes each on the shared 2-core machine).
DEFAULT = ("vqvae_audio", "dvae_srnn")


def _families(default: bool):
    return [pytest.param(n, marks=() if n in DEFAULT or not default else pytest.mark.slow) for n in sorted(FAMILIES)]


@pytest.fixture(scope="module")
def tokenizer_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("random_tokenizers"))


def _config(name, tokenizer_root, dtype, examples_per_batch=4):
    module, variant, tokenizers = FAMILIES[name]
    config = module.get_config(variant)
    if tokenizers:
        _random_tokenizers(config, tokenizer_root)
    config.model.dtype = dtype
    config.data.examples_per_batch = examples_per_batch
    if "output_bias_utterances" in config.train:
        config.train.output_bias_utterances = 0  # random batches: no corpus to read
    return config


def _batch(task, seed=0):
    rng = np.random.default_rng(seed)
    scale = 0.1 if task.pipeline.kind != "feature_windows" else 1.0  # waveforms: speech-like amplitudes
    batch = _random_like_dummy_batch(task, rng, scale)
    for label in task.pipeline.labels:
        batch[label] = rng.integers(0, task.num_classes, task.pipeline.examples_per_batch)
    return batch


def _dot_flops_by_dtype(jaxpr, totals=None) -> dict[str, float]:
    """FLOPs of every dot_general / convolution of ``jaxpr`` (sub-jaxprs included), by operand dtypes."""
    totals = {} if totals is None else totals
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            lhs, rhs, out = eqn.invars[0].aval, eqn.invars[1].aval, eqn.outvars[0].aval
            if name == "dot_general":
                (contracting, _), _ = eqn.params["dimension_numbers"]
                flops = 2 * out.size * int(np.prod([lhs.shape[i] for i in contracting]))
            else:
                flops = 2 * out.size * int(np.prod(rhs.shape)) // out.shape[-1]
            key = f"{lhs.dtype}x{rhs.dtype}"
            totals[key] = totals.get(key, 0) + flops
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, jax_core.ClosedJaxpr):
                    _dot_flops_by_dtype(sub.jaxpr, totals)
                elif isinstance(sub, jax_core.Jaxpr):
                    _dot_flops_by_dtype(sub, totals)
    return totals


def test_compute_dtype_resolves_auto_by_platform_and_rejects_unknown_names():
    assert precision.compute_dtype("auto", "cpu") == jnp.float32
    assert precision.compute_dtype("auto", "cuda") == jnp.bfloat16
    assert precision.compute_dtype("auto", "tpu") == jnp.bfloat16
    assert precision.compute_dtype("auto") == jnp.float32  # this CPU
    assert precision.compute_dtype("bfloat16", "cpu") == jnp.bfloat16
    with pytest.raises(ValueError, match="model.dtype='float16'"):
        precision.compute_dtype("float16")
    config = vqvae_audio.get_config("smoke")
    config.model.dtype = "half"
    with pytest.raises(ValueError, match="config key model.dtype='half'"):
        build_task(config)


@pytest.mark.parametrize("name", _families(default=True))
def test_bfloat16_loss_is_within_tolerance_of_float32_and_computes_in_bfloat16(name, tokenizer_root):
    losses, flops = {}, {}
    for dtype in ("float32", "bfloat16"):
        task = build_task(_config(name, tokenizer_root, dtype))
        variables = task.init_variables(jax.random.key(0), task.dummy_batch())
        model_state = {k: v for k, v in variables.items() if k != "params"}
        batch = _batch(task)

        def loss(params):
            return task.loss(params, model_state, batch, jax.random.key(1), jnp.int32(10))[0]

        with batched_attention():  # trace one attention form (the platform switch traces every platform's)
            jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(variables["params"])
            value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
        assert value.dtype == jnp.float32
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads)), "gradients reach float32 params"
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
        losses[dtype], flops[dtype] = float(value), _dot_flops_by_dtype(jaxpr.jaxpr)
    assert set(flops["float32"]) == {"float32xfloat32"}
    bf16_fraction = flops["bfloat16"].get("bfloat16xbfloat16", 0) / sum(flops["bfloat16"].values())
    assert bf16_fraction >= MIN_BF16_FLOP_FRACTION, flops["bfloat16"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=LOSS_RTOL)


def _train_losses(config, steps: int, seed: int = 0) -> np.ndarray:
    """Losses of ``steps`` real compiled training steps on one fixed random batch."""
    task = build_task(config)
    mesh = mesh_lib.make_mesh({"data": 1, "num_devices": 1})
    tx, schedule = make_optimizer(config.optimizer, steps)
    tx = task.optimizer(tx)
    state = step_lib.create_state(task, tx, mesh, jax.random.key(seed))
    step = step_lib.compile_train_step(task, tx, schedule, mesh, state)
    batch = mesh_lib.global_batch(_batch(task, seed), mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses))


def _check_trains_like_float32(name, tokenizer_root, steps):
    curves = {dtype: _train_losses(_config(name, tokenizer_root, dtype), steps) for dtype in ("float32", "bfloat16")}
    f32, bf16 = curves["float32"], curves["bfloat16"]
    assert np.all(np.isfinite(bf16))
    tail = max(steps // 10, 1)
    drop_f32, drop_bf16 = f32[:tail].mean() - f32[-tail:].mean(), bf16[:tail].mean() - bf16[-tail:].mean()
    assert drop_f32 > 0, f"float32 did not train: {f32[:3]} ... {f32[-3:]}"
    # bfloat16 recovers at least 90 % of float32's loss decrease, and ends within 10 % of its loss scale.
    assert drop_bf16 >= 0.9 * drop_f32, (f32[[0, -1]], bf16[[0, -1]])
    assert abs(bf16[-tail:].mean() - f32[-tail:].mean()) <= 0.1 * abs(f32[:tail].mean()), (f32[-1], bf16[-1])


def test_a_few_hundred_bfloat16_steps_train_like_float32(tokenizer_root):
    _check_trains_like_float32("dvae_vae", tokenizer_root, steps=200)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"dvae_vae"}))
def test_every_family_trains_in_bfloat16_like_float32(name, tokenizer_root):
    _check_trains_like_float32(name, tokenizer_root, steps=300)
