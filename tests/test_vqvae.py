"""VQ-VAEs: IS loss, conv layouts against flax, shapes, sizes, training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avrep.models import vqvae
from avrep.nn import layers
from avrep.nn.losses import itakura_saito, itakura_saito_from_log, mse

KEY = jax.random.PRNGKey(0)


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- losses ---


def test_itakura_saito_values():
    x = jnp.array([[1.0, 2.0], [0.5, 3.0]])
    np.testing.assert_allclose(itakura_saito(x, x), 0.0, atol=1e-7)
    # x/x_hat = 1/2 and 2: (1/2 + log 2 - 1) + (2 - log 2 - 1) = 1/2
    x, x_hat = jnp.array([[1.0, 2.0]]), jnp.array([[2.0, 1.0]])
    np.testing.assert_allclose(itakura_saito(x, x_hat), 0.25, rtol=1e-6)
    np.testing.assert_allclose(itakura_saito(x, x_hat, reduce="sum_bins"), 0.5, rtol=1e-6)
    # not symmetric: d(2 | 1) = 2 - log 2 - 1
    np.testing.assert_allclose(itakura_saito(jnp.array([2.0]), jnp.array([1.0])), 1 - np.log(2), rtol=1e-6)
    np.testing.assert_allclose(mse(x, x_hat), 1.0)
    with pytest.raises(ValueError, match="reduce"):
        itakura_saito(x, x_hat, reduce="sum")


def test_itakura_saito_from_log_matches_direct():
    x = jnp.exp(jax.random.normal(KEY, (4, 513)) * 3)
    log_x_hat = jax.random.normal(jax.random.PRNGKey(1), (4, 513)) * 3
    for reduce in ("mean", "sum_bins"):
        np.testing.assert_allclose(
            itakura_saito_from_log(x, log_x_hat, reduce=reduce),
            itakura_saito(x, jnp.exp(log_x_hat), reduce=reduce),
            rtol=1e-5,
        )
    # stays finite where exp(log_x_hat) overflows float32
    big = itakura_saito_from_log(jnp.ones(3), jnp.array([100.0, -80.0, 0.0]))
    assert np.isfinite(big)


# ------------------------------------------------- conv layouts vs flax ---

# (ndim, transposed, size, c_in, c_out, kernel, stride, padding, expected):
# every layer shape of the four published settings (+ odd cases).
LAYER_CASES = [
    (1, False, 513, 1, 16, 4, 2, 1, 256),
    (1, False, 128, 32, 32, 3, 2, 1, 64),
    (1, False, 64, 32, 16, 3, 1, 1, 64),
    (1, True, 64, 32, 32, 4, 2, 1, 128),
    (1, True, 256, 16, 1, 3, 2, 0, 513),
    (1, True, 64, 8, 32, 1, 1, 0, 64),
    (2, False, 64, 3, 8, 4, 2, 1, 32),
    (2, False, 16, 8, 6, 4, 2, 1, 8),
    (2, False, 8, 6, 4, 3, 1, 1, 8),
    (2, True, 8, 6, 5, 4, 2, 1, 16),
    (2, True, 24, 4, 3, 4, 2, 1, 48),
    (2, False, 11, 3, 4, 5, 3, 2, 4),
    (2, True, 5, 3, 4, 5, 3, 1, 15),
]


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_layers_match_flax_and_xla_gradients(case):
    ndim, transposed, size, c_in, c_out, k, s, p, expected = case
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2,) + (size,) * ndim + (c_in,)).astype(np.float32)
    v = {
        "params": {
            "kernel": rng.normal(size=(k,) * ndim + (c_in, c_out)).astype(np.float32) / np.sqrt(c_in * k**ndim),
            "bias": rng.normal(size=(c_out,)).astype(np.float32),
        }
    }
    if transposed:
        ref = nn.ConvTranspose(c_out, (k,) * ndim, strides=(s,) * ndim, padding=[(k - 1 - p, k - 1 - p)] * ndim)
        ours = layers.ConvTranspose
    else:
        ref = nn.Conv(c_out, (k,) * ndim, strides=s, padding=[(p, p)] * ndim)
        ours = layers.Conv
    # same variables as the flax layer
    assert jax.tree.map(jnp.shape, jax.eval_shape(ours(c_out, k, s, p, ndim=ndim).init, KEY, x)) == jax.tree.map(
        jnp.shape, jax.eval_shape(ref.init, KEY, x)
    )
    out_shape = (2,) + (expected,) * ndim + (c_out,)
    w = rng.normal(size=out_shape).astype(np.float32)

    @jax.jit
    def outputs_and_grads(x, v):
        res = {"ref": ref.apply(v, x)}
        for impl in layers.IMPLS:
            layer = ours(c_out, k, s, p, ndim=ndim, impl=impl)
            loss = lambda x, v: jnp.sum(w * jnp.sin(layer.apply(v, x)))
            res[impl] = layer.apply(v, x), jax.grad(loss, argnums=(0, 1))(x, v)
        return res

    res = outputs_and_grads(x, v)
    assert res["ref"].shape == out_shape
    for impl in layers.IMPLS:
        np.testing.assert_allclose(res[impl][0], res["ref"], atol=2e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), res["fast"][1], res["xla"][1])


def test_bad_impl_raises():
    with pytest.raises(ValueError, match="impl='foo'"):
        layers.conv(jnp.zeros((1, 8, 1)), jnp.zeros((3, 1, 1)), 1, 1, "foo")


# ----------------------------------------------------------- BatchNorm ---


def _stats(v, key=3):
    """Non-trivial running statistics and affine parameters."""
    return jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(key), a.shape), v)


@pytest.mark.parametrize("use_running_average", [True, False])
def test_batch_norm_is_flax_batch_norm_bitwise(use_running_average):
    """avrep's BatchNorm (every audio VQ-VAE with batch_norm=True) computes exactly what nn.BatchNorm computed
    before it: outputs, updated statistics and gradients, eager and jitted."""
    x = jnp.exp(2 * jax.random.normal(jax.random.key(1), (6, 20, 5))) + 3
    ref, ours = nn.BatchNorm(momentum=0.9, epsilon=1e-5), layers.BatchNorm(momentum=0.9, epsilon=1e-5)
    v = ref.init(KEY, x, use_running_average=False)
    jax.tree.map(np.testing.assert_array_equal, v, ours.init(KEY, x, use_running_average=False))
    v = _stats(v)

    def run(module):
        apply = lambda p, x: module.apply(
            {**v, "params": p}, x, use_running_average=use_running_average, mutable=["batch_stats"]
        )
        grad = jax.grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x)[0])), argnums=(0, 1))
        return apply(v["params"], x), jax.jit(apply)(v["params"], x), jax.jit(grad)(v["params"], x)

    jax.tree.map(np.testing.assert_array_equal, run(ours), run(ref))


def test_batch_norm_batch_statistics_and_unbiased_running_variance():
    x = jax.random.normal(jax.random.key(1), (4, 10, 3)) * 3 + 1
    n = 40
    norm = layers.BatchNorm(momentum=0.9, epsilon=1e-5, unbiased_running_var=True)
    v = _stats(norm.init(KEY, x, use_running_average=False))
    y, new = norm.apply(v, x, use_running_average=False, mutable=["batch_stats"])
    flat = np.asarray(x, np.float64).reshape(n, 3)
    want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * v["params"]["scale"] + v["params"]["bias"]
    np.testing.assert_allclose(np.asarray(y).reshape(n, 3), want, rtol=1e-5, atol=1e-5)
    running = 0.9 * np.asarray(v["batch_stats"]["var"]) + 0.1 * flat.var(0, ddof=1)  # PyTorch: unbiased
    np.testing.assert_allclose(new["batch_stats"]["var"], running, rtol=1e-5)
    # Batch statistics in an inference call: the same output, nothing updated (batch_stats immutable).
    np.testing.assert_array_equal(norm.apply(v, x, use_running_average=False, update_stats=False), y)
    model = vqvae.build_vqvae({**vqvae.SETTINGS["vqmae_audio"], "batch_stats_mode": "batch"})
    power = jnp.exp(jax.random.normal(KEY, (5, 513)))
    variables = _stats(model.init(KEY, power, train=False))
    out = model.apply(variables, power, train=False)  # would raise if it tried to update batch_stats
    train, _ = model.apply(variables, power, train=True, mutable=["batch_stats", "vq_ema"])
    np.testing.assert_array_equal(out["z_e"], train["z_e"])
    running = model.clone(batch_stats_mode="running").apply(variables, power, train=False)
    assert not np.allclose(running["z_e"], out["z_e"])


# -------------------------------------------------------------- models ---

MODEL_CASES = [  # setting, overrides, input shape, z_e shape, params, reference count
    ("mdvae_audio", {}, (513,), (64, 8), 16_665, 16_700),
    ("mdvae_audio", {"arch": "paper", "num_codes": 128}, (513,), (64, 8), 24_473, None),
    ("vqmae_audio", {}, (513,), (64, 8), 21_017, None),
    ("mdvae_visual", {}, (64, 64, 3), (8, 8, 32), 948_963, 950_000),
    ("mdvae_visual", {"arch": "paper"}, (64, 64, 3), (8, 8, 32), 1_785_443, 1_790_000),
    ("vqmae_visual", {}, (96, 96, 3), (24, 24, 4), 749_063, None),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: f"{c[0]}{c[1]}")
def test_model_shapes_and_sizes(case):
    setting, overrides, in_shape, z_shape, n_params, spec = case
    cfg = {**vqvae.SETTINGS[setting], **overrides}
    model = vqvae.build_vqvae(cfg)
    x = jax.ShapeDtypeStruct((2,) + in_shape, jnp.float32)
    v = jax.eval_shape(lambda x: model.init(KEY, x, train=False), x)
    # Reference counts (ours, from [code-mdvae] and [Sadok-thesis] Tables B.1–B.2; the papers give
    # none): visual code ≈ 0.95 M, paper ≈ 1.79 M, audio code ≈ 16.7 K. (A count of 23.5 K for the
    # paper audio model uses the decoder kernels 3 and 4 of [MDVAE] Table A.6, which give 127/514
    # bins; with the code's kernels 4 and 3 it is 23,465 + 1,024 - 16 = 24,473.)
    assert _count(v["params"]) == n_params
    if spec:
        assert abs(n_params - spec) / spec < 0.01
    k = cfg.get("num_codes", 64 if cfg["modality"] == "audio" else 512)
    assert v["vq_ema"]["vq"]["codebook"].shape == (k, z_shape[-1])
    assert ("batch_stats" in v) == bool(cfg.get("batch_norm"))

    mutable = [c for c in v if c != "params"]
    out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=mutable), v, x)
    assert out["z_e"].shape == out["z_q"].shape == (2,) + z_shape
    assert out["indices"].shape == (2,) + z_shape[:-1]
    assert out["indices"].dtype == jnp.int32
    assert out["recon"].shape == x.shape
    assert ("log_recon" in out) == (cfg["modality"] == "audio")
    for key in ("commitment_loss", "perplexity", "usage"):
        assert out[key].shape == ()


def test_visual_fast_layout_equals_plain_model():
    x = jax.random.uniform(KEY, (2, 32, 32, 3), minval=-0.5, maxval=0.5)
    fast = vqvae.build_vqvae(vqvae.SETTINGS["mdvae_visual"])
    plain = vqvae.build_vqvae({**vqvae.SETTINGS["mdvae_visual"], "impl": "xla"})
    out_fast, out_plain = jax.jit(
        lambda x: [m.apply(fast.init(KEY, x, train=False), x, train=False) for m in (fast, plain)]
    )(x)
    np.testing.assert_allclose(out_fast["z_e"], out_plain["z_e"], atol=1e-4)
    np.testing.assert_array_equal(out_fast["indices"], out_plain["indices"])
    np.testing.assert_allclose(out_fast["recon"], out_plain["recon"], atol=1e-4)


def test_encode_quantize_decode_api():
    model = vqvae.build_vqvae({**vqvae.SETTINGS["vqmae_audio"], "input_transform": "log"})
    lin = vqvae.build_vqvae(vqvae.SETTINGS["vqmae_audio"])
    x = jnp.exp(jax.random.normal(KEY, (3, 513)))

    @jax.jit
    def run(x):
        v = model.init(KEY, x, train=False)
        out = model.apply(v, x, train=False)  # eval: batch_stats not mutated
        z_e = model.apply(v, x, method="encode")
        z_q, idx = model.apply(v, z_e, method="quantize")
        dec = model.apply(v, idx, method="decode_indices")
        _, upd = model.apply(v, x, train=True, mutable=["batch_stats", "vq_ema"])
        return v, out, z_e, z_q, idx, dec, upd, lin.apply(v, x, method="encode")

    v, out, z_e, z_q, idx, dec, upd, z_e_lin = run(x)
    np.testing.assert_allclose(out["recon"], jnp.exp(out["log_recon"]), rtol=1e-6)
    np.testing.assert_allclose(z_e, out["z_e"], rtol=1e-6)
    np.testing.assert_array_equal(idx, out["indices"])
    np.testing.assert_allclose(z_q, out["z_q"], atol=1e-6)
    np.testing.assert_allclose(dec["log_recon"], out["log_recon"], atol=1e-5)
    # the log transform is applied: linear-power input gives another latent
    assert not np.allclose(z_e_lin, z_e)
    # training updates the BatchNorm statistics and the codebook
    assert not np.allclose(
        upd["batch_stats"]["encoder"]["BatchNorm_0"]["mean"], v["batch_stats"]["encoder"]["BatchNorm_0"]["mean"]
    )
    assert not np.allclose(upd["vq_ema"]["vq"]["codebook"], v["vq_ema"]["vq"]["codebook"])


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"modality": "visual", "arch": "foo"}, r"arch='foo'.*'code', 'paper'"),
        ({"modality": "audio", "input_transform": "db"}, r"input_transform='db'.*'none', 'log'"),
        ({"modality": "audio", "impl": "gpu"}, r"impl='gpu'"),
        ({"modality": "video"}, r"modality='video'.*'audio', 'visual'"),
        ({"modality": "visual", "input_transform": "log"}, r"unknown key.*input_transform"),
        ({"modality": "audio", "batch_stats_mode": "eval"}, r"batch_stats_mode='eval'.*'running', 'batch'"),
    ],
)
def test_build_vqvae_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        vqvae.build_vqvae(cfg)


# ------------------------------------------------------------ training ---


def _train(model, x, loss_fn, steps, lr=1e-3):
    v = jax.jit(lambda x: model.init(KEY, x, train=True))(x)
    params, state = v.pop("params"), v
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, state):
        def f(params):
            out, new_state = model.apply({"params": params, **state}, x, train=True, mutable=list(state))
            rec = loss_fn(x, out)
            return rec + out["commitment_loss"], (rec, new_state)

        (_, (rec, state)), g = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, state, rec

    losses = []
    for _ in range(steps):
        params, opt, state, rec = step(params, opt, state)
        losses.append(float(rec))
    return losses


def test_audio_training_reduces_itakura_saito():
    # 32 smooth synthetic power spectra spanning ~4 decades
    f = jnp.linspace(0, 1, 513)
    a = jax.random.uniform(KEY, (32, 3), minval=1, maxval=8)
    x = jnp.exp(3 * jnp.sin(a[:, :1] * f + a[:, 1:2]) - 2 * a[:, 2:] * f)
    model = vqvae.build_vqvae(vqvae.SETTINGS["mdvae_audio"])
    losses = _train(model, x, lambda x, o: itakura_saito_from_log(x, o["log_recon"]), steps=120, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.5 * losses[0], (losses[0], losses[-10:])


def test_visual_training_reduces_mse():
    # 16 images of coloured Gaussian blobs; a narrower model to stay quick
    yy, xx = jnp.mgrid[:32, :32] / 32.0
    c = jax.random.uniform(KEY, (16, 1, 1, 3, 3), minval=0.2, maxval=0.8)
    x = jnp.exp(-((xx[..., None] - c[..., 0]) ** 2 + (yy[..., None] - c[..., 1]) ** 2) * 20)
    x = (x * c[..., 2] - 0.5).astype(jnp.float32)
    model = vqvae.build_vqvae({**vqvae.SETTINGS["mdvae_visual"], "hidden": 32, "residual_hidden": 8, "code_dim": 8})
    losses = _train(model, x, lambda x, o: mse(x, o["recon"]), steps=60)
    assert np.mean(losses[-10:]) < 0.5 * losses[0], (losses[0], losses[-10:])
