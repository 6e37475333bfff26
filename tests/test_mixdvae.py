"""MixDVAE's pre-trained SRNNs ([MixDVAE]): SRNN's ``inference="causal"``, ``output="gaussian"`` and
``naming="mixdvae"`` fields, the Gaussian likelihood of ``dvae_loss``, the converter, and parity with the
authors' released models (MOT boxes, SC-ASS WSJ0 / CBF speech; golden files computed by their PyTorch
classes, skipped when absent)."""

import configparser
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import load_fixture, max_abs_diff, tolerance, torch_state_dict

from avrep.convert import dvae as convert_dvae
from avrep.convert import state_dict as convert_sd
from avrep.models import dvae

KEY = jax.random.key(0)
F, Z = 5, 3
TINY = dict(
    dense_x_h=(6,), dim_rnn_h=7, dense_hx_g=(9,), dim_rnn_g=4, dense_gz_z=(8, 5), dense_hz_x=(10,), dense_hz_z=(11, 6)
)
VARIANTS = {
    "mot": dict(inference="causal", output="gaussian", scheduled_sampling=True, naming="mixdvae"),
    "scass": dict(scheduled_sampling=True, naming="mixdvae"),
    "causal": dict(inference="causal"),
    "gaussian": dict(output="gaussian"),
    "gaussian_ss": dict(output="gaussian", scheduled_sampling=True),
}


@functools.cache
def _init(variant):
    model = dvae.build_model(dict(model="SRNN", x_dim=F, z_dim=Z, **TINY, **VARIANTS[variant]))
    return model, model.init({"params": KEY, "sample": KEY}, _x(2, 3))


def _x(batch, time, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, time, F))


def _apply(variant, x, **kw):
    model, variables = _init(variant)
    return model.apply(variables, x, rngs={"sample": kw.pop("key", KEY)}, **kw)


# ---------------------------------------------------------------------------------- model fields ---


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_outputs_and_parameter_names(variant):
    fields = VARIANTS[variant]
    model, variables = _init(variant)
    out = _apply(variant, _x(2, 6), sample=False)
    for k in ("z", "z_mean", "z_logvar", "prior_mean", "prior_logvar"):
        assert out[k].shape == (2, 6, Z), k
    assert out["log_var"].shape == (2, 6, F) and out["h"].shape == (2, 6, 7)
    gaussian = fields.get("output") == "gaussian"
    assert ("mean" in out) == gaussian and ("h_gen" in out) == fields.get("scheduled_sampling", False)
    if gaussian:
        assert out["mean"].shape == (2, 6, F)
    np.testing.assert_array_equal(out["z"], out["z_mean"])
    names = set(variables["params"])
    mix = fields.get("naming") == "mixdvae"
    heads = {"inf_z_mean", "inf_z_logvar", "prior_z_mean", "prior_z_logvar"} if mix else {"inf_mean", "prior_mean"}
    assert heads <= names
    gen_heads = {
        (True, True): {"gen_x_mean", "gen_x_logvar"},
        (True, False): {"gen_x"},
        (False, True): {"gen_mean", "gen_logvar"},
        (False, False): {"gen_logvar"},
    }
    assert {n for n in names if n.startswith("gen_")} == gen_heads[mix, gaussian]
    assert ({"mlp_hx_g", "rnn_g"} <= names) == (fields.get("inference") != "causal")
    assert set(variables["params"]["mlp_gz_z"]) == ({"linear_0", "linear_1"} if mix else {"linear0", "linear1"})
    # The causal encoder reads [h_t, x_t, z_{t-1}]: 7 + F + Z inputs.
    if fields.get("inference") == "causal":
        assert variables["params"]["mlp_gz_z"]["linear_0" if mix else "linear0"]["kernel"].shape[0] == 7 + F + Z


@pytest.mark.parametrize("variant", ["mot", "scass"])
def test_causal_inference_does_not_see_the_future(variant):
    x = _x(2, 8)
    future = x.at[:, 5:].add(1.0)
    a, b = _apply(variant, x, sample=False), _apply(variant, future, sample=False)
    assert not np.allclose(a["z"][:, 5:], b["z"][:, 5:])
    if variant == "mot":
        np.testing.assert_array_equal(a["z"][:, :5], b["z"][:, :5])
    else:  # the backward RNN reads the future
        assert not np.allclose(a["z"][:, :5], b["z"][:, :5])


def test_gaussian_feedback_noise():
    x = _x(2, 6)
    eps_x = np.asarray(jax.random.normal(jax.random.key(3), (2, 6, F)))
    mean_fed = _apply("mot", x, sample=False)
    sampled = _apply("mot", x, sample=False, eps_x=eps_x)
    # Teacher forcing: the output does not depend on the fed-back samples, h_gen (hence the prior) does.
    np.testing.assert_array_equal(sampled["mean"], mean_fed["mean"])
    np.testing.assert_array_equal(sampled["z"], mean_fed["z"])
    assert not np.allclose(sampled["h_gen"], mean_fed["h_gen"])
    np.testing.assert_array_equal(sampled["h_gen"][:, 0], mean_fed["h_gen"][:, 0])  # h_gen_1 reads x^_0 = 0
    # The teacher-forced shortcut equals the step-by-step loop (traced use_pred), with and without noise.
    model, variables = _init("mot")
    looped = jax.jit(lambda u, e: model.apply(variables, x, sample=False, use_pred=u, eps_x=e, rngs={"sample": KEY}))
    for e, want in ((eps_x, sampled), (np.zeros_like(eps_x), mean_fed)):
        got = looped(0.0, e)
        for k in ("mean", "log_var", "h_gen", "prior_mean"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    pred = _apply("mot", x, sample=False, use_pred=1.0)
    assert not np.allclose(pred["mean"], mean_fed["mean"])
    # sample=True draws the feedback noise too; given eps_x replaces it.
    a, b = _apply("mot", x, key=jax.random.key(1)), _apply("mot", x, key=jax.random.key(2))
    assert not np.allclose(a["h_gen"], b["h_gen"])
    with pytest.raises(ValueError, match=r"SRNN: eps_x has shape \(2, 6, 2\)"):
        _apply("mot", x, eps_x=np.zeros((2, 6, 2)))
    for variant in ("scass", "gaussian"):  # no Gaussian sample is fed back
        with pytest.raises(ValueError, match="only a model with output='gaussian' and scheduled_sampling"):
            _apply(variant, x, eps_x=eps_x)


@pytest.mark.parametrize("variant", ["mot", "gaussian"])
def test_generate_gaussian(variant):
    model, variables = _init(variant)
    gen = functools.partial(model.apply, variables, 3, 7, method="generate")
    full = gen(rngs={"sample": jax.random.key(1)}, return_all=True)
    assert full["mean"].shape == full["x"].shape == full["log_var"].shape == (3, 7, F)
    np.testing.assert_array_equal(gen(rngs={"sample": jax.random.key(1)}), full["log_var"])
    assert not np.allclose(full["x"], full["mean"])
    means = gen(rngs={"sample": jax.random.key(1)}, return_all=True, feedback="mean")
    np.testing.assert_array_equal(means["x"], means["mean"])
    with pytest.raises(ValueError, match=r"feedback='variance': expected one of \('sample', 'mean'\)"):
        gen(rngs={"sample": KEY}, feedback="variance")


@pytest.mark.parametrize("variant", ["mot", "scass"])
def test_no_python_loop_over_time(variant):
    model, variables = _init(variant)
    rngs = {"sample": KEY}

    def n_eqns(t):
        call = jax.make_jaxpr(lambda x: model.apply(variables, x, rngs=rngs, use_pred=0.5))(_x(2, t))
        gen = jax.make_jaxpr(lambda: model.apply(variables, 2, t, method="generate", rngs=rngs))()
        return len(call.jaxpr.eqns), len(gen.jaxpr.eqns)

    assert n_eqns(8) == n_eqns(64)


def test_field_checks_and_presets():
    for field in ("inference", "output", "naming"):
        with pytest.raises(ValueError, match=rf"SRNN\.{field}='x': expected one of"):
            dvae.SRNN(**{field: "x"})
    heads = {"mixdvae/MOT": "gen_x_mean", "mixdvae/SCASS": "gen_x"}
    for name, head in heads.items():
        preset = dvae.PRESETS[name]
        model = dvae.build_model(name)
        shapes = jax.eval_shape(
            lambda m=model: m.init({"params": KEY, "sample": KEY}, jnp.ones((1, 2, preset["x_dim"])))
        )
        assert shapes["params"][head]["kernel"].shape == (preset["dense_hz_x"][-1], preset["x_dim"]), name


# --------------------------------------------------------------------------------------------- loss ---


def test_gaussian_likelihood():
    x = _x(2, 5)
    out = _apply("mot", x, sample=True)
    loss, m = dvae.dvae_loss(out, x, beta=0.5, likelihood="gaussian")
    want = 0.5 * np.sum(
        math.log(2 * math.pi) + out["log_var"] + (x - out["mean"]) ** 2 * np.exp(-np.asarray(out["log_var"])), -1
    )
    np.testing.assert_allclose(m["recon"], want.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, m["recon"] + 0.5 * m["kl"], rtol=1e-6)
    # Exact mean and unit variance: D/2 log(2 pi) per frame.
    _, m = dvae.dvae_loss(dict(out, mean=x, log_var=jnp.zeros_like(x)), x, likelihood="gaussian")
    np.testing.assert_allclose(m["recon"], F / 2 * math.log(2 * math.pi), rtol=1e-6)
    with pytest.raises(ValueError, match="pass likelihood='gaussian'"):
        dvae.dvae_loss(out, x)
    with pytest.raises(ValueError, match=r"needs outputs\['mean'\]"):
        dvae.dvae_loss(_apply("scass", jnp.exp(x), sample=False), jnp.exp(x), likelihood="gaussian")
    with pytest.raises(ValueError, match="likelihood='l2'"):
        dvae.dvae_loss(out, x, likelihood="l2")
    model, variables = _init("mot")

    def total(params):
        o = model.apply({"params": params}, x, rngs={"sample": KEY}, use_pred=0.5)
        return dvae.dvae_loss(o, x, likelihood="gaussian")[0]

    leaves = jax.tree.leaves(jax.jit(jax.grad(total))(variables["params"]))
    assert all(bool(jnp.isfinite(g).all()) for g in leaves) and any(bool(jnp.any(g != 0)) for g in leaves)


# ---------------------------------------------------------------------------------------- converter ---


def _fields(model):
    """The fields that shape the model (a causal SRNN has no backward RNN: dense_hx_g, dim_rnn_g unused)."""
    unused = ("parent", "name") + (("dense_hx_g", "dim_rnn_g") if model.inference == "causal" else ())
    return {k: getattr(model, k) for k in model.__dataclass_fields__ if k not in unused}


@pytest.mark.parametrize("variant", ["mot", "scass"])
def test_converter_round_trip_and_config(variant, tmp_path):
    model, variables = _init(variant)
    sd = torch_state_dict(variables["params"])
    converted = convert_dvae.dvae_variables(sd, model)
    jax.tree.map(np.testing.assert_array_equal, converted, jax.tree.map(np.asarray, dict(variables)))
    cfg = convert_dvae.infer_dvae_config(sd)
    assert _fields(dvae.build_model(cfg)) == _fields(model)
    # A config.ini in MixDVAE's form: name SRNN_dvae_single, [Training] schedule_sampling.
    parser = configparser.ConfigParser()
    parser["Network"] = {"name": "SRNN_dvae_single", "x_dim": str(F), "dense_gz_z": "8, 5", "activation": "tanh"}
    parser["Training"] = {"beta": "1", "schedule_sampling": "False"}
    with open(tmp_path / "config.ini", "w") as f:
        parser.write(f)
    assert convert_dvae.infer_dvae_config(sd, tmp_path / "config.ini")["scheduled_sampling"] is False
    with pytest.raises(ValueError, match=r"dense_gz_z = '8, 6' but the weights say \(8, 5\)"):
        convert_dvae.infer_dvae_config(sd, {"name": "SRNN_dvae_single", "dense_gz_z": "8, 6"})
    with pytest.raises(ValueError, match="name = 'VRNN'"):
        convert_dvae.infer_dvae_config(sd, {"name": "VRNN"})


# ---------------------------------------------------------------------------------- parity goldens ---

FIXTURES = {"mixdvae/model_mot": "mixdvae/MOT", "mixdvae/model_scass_wsj": "mixdvae/SCASS"}
FIXTURES["mixdvae/model_scass_cbf"] = "mixdvae/SCASS"
OUTPUT_KEYS = dict(
    z="z", z_mean_inf="z_mean", z_logvar_inf="z_logvar", z_mean_prior="prior_mean", z_logvar_prior="prior_logvar"
)
# Arrays checked in float64 only. The CBF model fed its own variances (up to 3e4) for 60 frames (use_pred=1)
# amplifies rounding: the authors' float32 result is 0.33 % off their float64 one, and XLA's CPU float32 dot
# products, whose rounding on these inputs is several times torch's (or NumPy's), drive ours apart from
# frame ~46 on (up to ~900 x the floor). Our float64 run lands on the authors' numbers (~1 x the floor), so the
# data flow is the authors'; the float32 deviation is printed, not asserted.
FLOAT64_ONLY = {
    "mixdvae/model_scass_cbf": {
        f"use_pred1.{k}" for k in ("x_gen", "z_mean_prior", "z_logvar_prior", "loss_recon", "loss_KLD", "loss_tot")
    }
}


def _ours(name, out, x, model, beta):
    """Our value of the golden array ``name`` (authors' layout, (B, T, ·) for both models), or None."""
    if name in OUTPUT_KEYS:
        return out[OUTPUT_KEYS[name]]
    var = jnp.exp(out["log_var"])
    if name in ("x_gen", "x_gen_var"):
        return var
    if name == "x_gen_mean":
        return out["mean"]
    if name == "return":  # the MOT forward: cat(mean, variance)
        return jnp.concatenate([out["mean"], var], axis=-1)
    # Authors' losses, / (B T): their KL omits the closed form's +1 (+ z_dim / 2); MOT's recon is
    # sum(log_var + (x - mean)^2 / var) = 2 NLL - x_dim log(2 pi); SC-ASS's IS adds 1e-10 to the variance.
    if model.output == "gaussian":
        _, m = dvae.dvae_loss(out, x, likelihood="gaussian")
        recon = 2.0 * m["recon"] - model.x_dim * math.log(2 * math.pi)
    else:
        _, m = dvae.dvae_loss(out, x, eps=0.0, variance_eps=1e-10)
        recon = m["recon"]
    kl = m["kl"] + model.z_dim / 2
    return {"loss_recon": recon, "loss_KLD": kl, "loss_tot": recon + beta * kl}.get(name)


def _deviations(model, variables, x, noise, golden, beta, dtype):
    """{golden name: max |ours - theirs|} for every array we produce, computed in ``dtype``."""
    calls = {
        "use_pred0.": dict(sample=False, use_pred=0.0),
        "use_pred1.": dict(sample=False, use_pred=1.0),
        "noise.use_pred0.": dict(use_pred=0.0, **noise),
    }
    variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
    x = jnp.asarray(x, dtype)
    diffs = {}
    with jax.default_matmul_precision("highest"):  # a no-op on CPU; keeps GPUs off TF32
        for prefix, kw in calls.items():
            out = model.apply(variables, x, rngs={"sample": KEY}, **kw)
            for name, want in golden.items():
                base = name[len(prefix) :]
                if name.startswith(prefix) and "." not in base:
                    ours = _ours(base, out, x, model, beta)
                    if ours is not None:
                        diffs[name] = max_abs_diff(ours, want)
    return diffs


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_parity_with_released_models(fixture):
    path, meta, inputs, golden = load_fixture(fixture)
    weights = convert_sd.load_state_dict(os.path.join(path, "weights.npz"))

    config = dict(meta["architecture"]["config"], **meta["architecture"]["training"])
    cfg = convert_dvae.infer_dvae_config(weights, config)
    assert _fields(dvae.build_model(cfg)) == _fields(dvae.build_model(FIXTURES[fixture])), "PRESETS differ"
    model = dvae.build_model(cfg)
    variables = convert_dvae.dvae_variables(weights, model)
    mot = model.output == "gaussian"
    # The MOT forward takes (B, T, 4), the audio one (B, F, T); both return (B, T, ·).
    x = inputs["x"] if mot else inputs["x"].swapaxes(1, 2)
    # Noise, time-major in the goldens: encoder eps_z[t] (B, Z), then (MOT) the decoder's eps_x[t] (B, 4).
    if mot:
        np.testing.assert_array_equal(inputs["eps"], np.concatenate([inputs["eps_z"].ravel(), inputs["eps_x"].ravel()]))
        noise = dict(eps=inputs["eps_z"].swapaxes(0, 1), eps_x=inputs["eps_x"].swapaxes(0, 1))
    else:
        noise = dict(eps=inputs["eps"].swapaxes(0, 1))
    floors = meta["noise_floor_fp64"]["arrays"]
    beta = float(meta["architecture"]["training"]["beta"])

    f32 = _deviations(model, variables, x, noise, golden, beta, jnp.float32)
    with jax.enable_x64(True):
        f64 = _deviations(model, variables, x, noise, golden, beta, jnp.float64)
    assert set(f32) == set(f64) == set(golden), f"not reproduced: {sorted(set(golden) - set(f32))}"
    only64 = FLOAT64_ONLY.get(fixture, set())
    failed = [
        f"{name} ({dtype}): max |diff| {d:.3g} > {tolerance(floors[name]):.3g} (floor {floors[name]})"
        for dtype, diffs in (("float32", f32), ("float64", f64))
        for name, d in diffs.items()
        if d > tolerance(floors[name]) and not (dtype == "float32" and name in only64)
    ]
    assert not failed, f"{fixture}: " + "; ".join(failed)

    def worst(diffs, names):
        name = max(names, key=lambda n: diffs[n] / floors[n]["max_abs_fp32_vs_fp64"])
        return f"{name} {diffs[name] / floors[name]['max_abs_fp32_vs_fp64']:.2f} x floor"

    checked32 = sorted(set(f32) - only64)
    print(
        f"\n{fixture}: {len(golden)} arrays; largest |diff| / floor: float32 {worst(f32, checked32)}"
        f" (/ tolerance {max(f32[n] / tolerance(floors[n]) for n in checked32):.2f}), float64 {worst(f64, sorted(f64))}"
        + (f"; float32 of the float64-only arrays: {worst(f32, sorted(only64))}" if only64 else "")
    )
