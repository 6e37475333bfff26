"""DVAE family (VAE, DKF, STORN, VRNN, SRNN, RVAE, DSAE): the PyTorch-layout LSTM against NumPy, shapes,
generation, the loss, the checkpoint converter, and parity with the authors' released models (golden
files computed by their PyTorch classes; skipped when the goldens are absent)."""

import configparser
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import load_fixture, max_abs_diff, parity_dir, tolerance, torch_state_dict

from avrep.convert import dvae as convert_dvae
from avrep.convert import state_dict as convert_sd
from avrep.models import dvae
from avrep.nn import recurrent

KEY = jax.random.key(0)
F, Z = 12, 3
# Small, mostly distinct sizes so that a mixed-up dimension shows up as a shape error.
TINY = {
    "VAE": dict(dense_x_z=(9, 7)),
    "DKF": dict(dense_x_gx=(9,), dim_rnn_gx=6, dense_ztm1_g=(5,), dense_g_z=(7,), dense_z_x=(4, 8)),
    "DKF-bidir": dict(dense_x_gx=(9,), dim_rnn_gx=6, bidir_gx=True, dense_ztm1_g=(), dense_g_z=(7,), dense_z_x=(8,)),
    "STORN": dict(
        dense_x_g=(9,), dim_rnn_g=6, dense_g_z=(7,), dense_z_h=(4,), dense_xtm1_h=(10,), dim_rnn_h=5, dense_h_x=(8,)
    ),
    "VRNN": dict(dense_x=(9,), dense_z=(4, 5), dense_hx_z=(7,), dense_hz_x=(8,), dense_h_z=(6,), dim_rnn=10),
    "SRNN": dict(
        dense_x_h=(9,), dim_rnn_h=6, dense_hx_g=(10,), dim_rnn_g=5, dense_gz_z=(7, 4), dense_hz_x=(8,), dense_hz_z=(11,)
    ),
    "SRNN_ss": dict(
        dense_x_h=(9,), dim_rnn_h=6, dense_hx_g=(), dim_rnn_g=5, dense_gz_z=(7,), dense_hz_x=(8,), dense_hz_z=(11,)
    ),
    "RVAE-Causal": dict(
        dense_x_gx=(9,), dim_rnn_g_x=6, dense_z_gz=(4,), dim_rnn_g_z=5, dense_g_z=(7,), dense_z_h=(), dim_rnn_h=8
    ),
    "RVAE-NonCausal": dict(
        causal=False, dense_x_gx=(), dim_rnn_g_x=6, dense_z_gz=(), dim_rnn_g_z=5, dense_g_z=(), dim_rnn_h=8
    ),
    "DSAE": dict(
        v_dim=2,
        dense_x=(9,),
        dim_rnn_gv=6,
        dense_gv_v=(5,),
        dense_xv_gxv=(7,),
        dim_rnn_gxv=4,
        dense_gxv_gz=(),
        dim_rnn_gz=10,
        dim_rnn_prior=8,
        dense_vz_x=(11,),
    ),
}
CLASSES = {"DKF-bidir": "DKF", "SRNN_ss": "SRNN", "RVAE-Causal": "RVAE", "RVAE-NonCausal": "RVAE"}


def _tiny(name, **extra):
    fields = dict(TINY[name], **extra)
    if name == "SRNN_ss":
        fields["scheduled_sampling"] = True
    return dvae.build_model(dict(model=CLASSES.get(name, name), x_dim=F, z_dim=Z, **fields))


def _power(batch, time, seed=1):
    return jnp.exp(2.0 * jax.random.normal(jax.random.key(seed), (batch, time, F)))


@functools.cache
def _init(name):
    model = _tiny(name)
    return model, model.init({"params": KEY, "sample": KEY}, _power(2, 3))


def _apply(name, x, **kw):
    model, variables = _init(name)
    return model.apply(variables, x, rngs={"sample": kw.pop("key", KEY)}, **kw)


# ----------------------------------------------------------------------- LSTM vs the PyTorch equations ---


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _np_lstm(p, xs, suffix=""):
    """PyTorch's LSTM equations in NumPy over time-major xs [T, B, in], zero initial state."""
    w_ih, w_hh = p["weight_ih" + suffix].astype(np.float64), p["weight_hh" + suffix].astype(np.float64)
    b = (p["bias_ih" + suffix] + p["bias_hh" + suffix]).astype(np.float64)
    hidden = w_hh.shape[1]
    h = c = np.zeros((xs.shape[1], hidden))
    out = []
    for x in xs:
        i, f, g, o = np.split(x @ w_ih.T + h @ w_hh.T + b, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out)


def _np_rnn(p, xs):
    h = np.zeros((xs.shape[1], p["weight_hh"].shape[1]))
    out = []
    for x in xs:
        h = np.tanh(x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"])
        out.append(h)
    return np.stack(out)


def _np_layer(p, xs, bidirectional=False, reverse=False):
    """torch.nn.LSTM (optionally bidirectional) applied to xs, or to flip(xs) and flipped back."""
    xs = xs[::-1] if reverse else xs
    out = _np_lstm(p, xs)
    if bidirectional:
        out = np.concatenate([out, _np_lstm(p, xs[::-1], "_reverse")[::-1]], axis=-1)
    return out[::-1] if reverse else out


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_equals_pytorch_equations(bidirectional, reverse):
    xs = np.random.default_rng(0).normal(size=(7, 3, 5)).astype(np.float32)
    layer = recurrent.LSTM(5, 4, bidirectional=bidirectional, reverse=reverse)
    variables = layer.init(KEY, xs)
    p = jax.tree.map(np.asarray, variables["params"])
    assert p["weight_ih"].shape == (16, 5) and p["weight_hh"].shape == (16, 4) and p["bias_hh"].shape == (16,)
    assert ("weight_ih_reverse" in p) == bidirectional
    want = _np_layer(p, xs.astype(np.float64), bidirectional, reverse)
    np.testing.assert_allclose(layer.apply(variables, xs), want, atol=2e-6)
    # Batch-major layout: the same numbers.
    bm = recurrent.LSTM(5, 4, bidirectional=bidirectional, reverse=reverse, time_major=False)
    np.testing.assert_allclose(bm.apply(variables, xs.swapaxes(0, 1)), want.swapaxes(0, 1), atol=2e-6)


def test_lstm_cell_and_steps_equal_the_layer():
    xs = np.random.default_rng(1).normal(size=(6, 2, 5)).astype(np.float32)
    cell = recurrent.LSTMCell(5, 4)
    variables = cell.init(KEY, cell.initial_state((2,)), xs[0])
    p = jax.tree.map(np.asarray, variables["params"])
    carry, hs = cell.initial_state((2,)), []
    for x in xs:
        carry, h = cell.apply(variables, carry, x)
        hs.append(h)
    np.testing.assert_allclose(np.stack(hs), _np_lstm(p, xs.astype(np.float64)), atol=2e-6)
    # nn.scan over the cell (Flax's convention) and the layer with the same parameters agree.
    scanned = recurrent.run_lstm(variables["params"], jnp.asarray(xs))[0]
    np.testing.assert_allclose(scanned, np.stack(hs), atol=1e-6)


def test_simple_rnn_equals_pytorch_equations():
    xs = np.random.default_rng(2).normal(size=(6, 2, 5)).astype(np.float32)
    layer = recurrent.SimpleRNN(5, 3)
    variables = layer.init(KEY, xs)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    np.testing.assert_allclose(layer.apply(variables, xs), _np_rnn(p, xs.astype(np.float64)), atol=2e-6)


# ------------------------------------------------------------------------------- models: shapes, API ---


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shapes_and_noise(name):
    x = _power(2, 5)
    out = _apply(name, x, sample=False)
    for k in ("z", "z_mean", "z_logvar", "prior_mean", "prior_logvar"):
        assert out[k].shape == (2, 5, Z), k
    assert out["log_var"].shape == (2, 5, F)
    assert all(bool(jnp.isfinite(v).all()) for v in out.values())
    np.testing.assert_array_equal(out["z"], out["z_mean"])
    if name in ("VAE", "STORN") or name.startswith("RVAE"):
        assert not np.any(out["prior_mean"]) and not np.any(out["prior_logvar"])
    if name == "DSAE":
        for k in ("v", "v_mean", "v_logvar", "v_prior_mean", "v_prior_logvar"):
            assert out[k].shape == (2, TINY["DSAE"]["v_dim"]), k
    sampled = _apply(name, x, sample=True)
    assert not np.allclose(sampled["z"], sampled["z_mean"])
    # Given noise is used in place of the rng, in call order eps[:, t].
    eps = np.asarray(jax.random.normal(jax.random.key(5), (2, 5, Z)))
    kw = {"eps_v": np.zeros((2, 2), np.float32)} if name == "DSAE" else {}
    given = _apply(name, x, eps=eps, key=jax.random.key(9), **kw)
    np.testing.assert_allclose(given["z"], given["z_mean"] + np.exp(0.5 * given["z_logvar"]) * eps, rtol=1e-5)


def test_srnn_scheduled_sampling():
    x = _power(2, 6)
    tf = _apply("SRNN_ss", x, sample=False)
    pred = _apply("SRNN_ss", x, sample=False, use_pred=1.0)
    assert tf["h_gen"].shape == (2, 6, 6) and tf["h"].shape == (2, 6, 6)
    # The teacher-forced shortcut (an LSTM over exp(y_{t-1})) equals the step-by-step loop run with
    # a 0 probability of using the prediction (traced, so the loop is taken).
    model, variables = _init("SRNN_ss")
    looped = jax.jit(lambda u: model.apply(variables, x, sample=False, use_pred=u, rngs={"sample": KEY}))(0.0)
    for k in ("log_var", "h_gen", "prior_mean"):
        np.testing.assert_allclose(looped[k], tf[k], rtol=1e-5, atol=1e-5)
    assert not np.allclose(pred["log_var"], tf["log_var"])
    np.testing.assert_array_equal(pred["z"], tf["z"])  # inference does not see the decoder


@pytest.mark.parametrize("name", sorted(TINY))
def test_generate(name):
    model, variables = _init(name)
    gen = functools.partial(model.apply, variables, 3, 7, method="generate")
    a, b = gen(rngs={"sample": jax.random.key(1)}), gen(rngs={"sample": jax.random.key(2)})
    assert a.shape == (3, 7, F)
    assert bool(jnp.isfinite(a).all()) and bool(jnp.isfinite(b).all())
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, gen(rngs={"sample": jax.random.key(1)}))
    full = gen(rngs={"sample": jax.random.key(1)}, return_all=True)
    assert full["z"].shape == (3, 7, Z)
    np.testing.assert_array_equal(full["log_var"], a)


@pytest.mark.parametrize("name", sorted(TINY))
def test_no_python_loop_over_time(name):
    """The jaxprs of __call__ (and generate) have as many equations for 8 as for 64 frames."""
    model, variables = _init(name)
    rngs = {"sample": KEY}
    kw = {"use_pred": 0.5} if name == "SRNN_ss" else {}

    def n_eqns(t):
        call = jax.make_jaxpr(lambda x: model.apply(variables, x, rngs=rngs, **kw))(_power(2, t))
        gen = jax.make_jaxpr(lambda: model.apply(variables, 2, t, method="generate", rngs=rngs))()
        return len(call.jaxpr.eqns), len(gen.jaxpr.eqns)

    assert n_eqns(8) == n_eqns(64)


def test_input_and_field_checks():
    model, variables = _init("SRNN")
    with pytest.raises(ValueError, match=r"SRNN: x has shape \(2, 4, 5\).*x_dim=12"):
        model.apply(variables, jnp.ones((2, 4, 5)), sample=False)
    with pytest.raises(ValueError, match="SRNN: x contains NaN"):
        model.apply(variables, _power(2, 4).at[1, 2, 3].set(jnp.nan), sample=False)
    with pytest.raises(ValueError, match="at least one frame"):
        model.apply(variables, jnp.ones((2, 0, F)), sample=False)
    with pytest.raises(ValueError, match=r"SRNN: eps has shape \(2, 4, 2\)"):
        model.apply(variables, _power(2, 4), eps=np.zeros((2, 4, 2)))
    with pytest.raises(TypeError, match=r"SRNN\.dense_x_h=256: expected a tuple"):
        dvae.SRNN(dense_x_h=256)
    with pytest.raises(TypeError, match=r"RVAE\.causal='no'"):
        dvae.RVAE(causal="no")
    with pytest.raises(TypeError, match=r"DKF\.dim_rnn_gx=0"):
        dvae.DKF(dim_rnn_gx=0)
    with pytest.raises(ValueError, match=r"VAE\.activation='gelu'"):
        dvae.VAE(activation="gelu")
    with pytest.raises(ValueError, match="unknown DVAE preset"):
        dvae.build_model("dvae/KVAE")
    with pytest.raises(ValueError, match="feedback='mean'"):
        model.apply(variables, 2, 3, method="generate", feedback="mean", rngs={"sample": KEY})


def test_presets_build():
    for name, preset in dvae.PRESETS.items():
        model = dvae.build_model(name)
        assert type(model).__name__ == preset["model"]
        x = jnp.ones((1, 2, preset["x_dim"]))
        shapes = jax.eval_shape(lambda m=model, x=x: m.init({"params": KEY, "sample": KEY}, x))
        head = next(k for k in ("gen_logvar", "gen_x", "gen_x_mean") if k in shapes["params"])  # MixDVAE's names
        assert shapes["params"][head]["kernel"].shape[-1] == preset["x_dim"], name


# ---------------------------------------------------------------------------------------------- loss ---


def test_loss():
    x = _power(2, 5)
    out = _apply("SRNN", x, sample=True)
    loss, metrics = dvae.dvae_loss(out, x, beta=0.5)
    assert bool(jnp.isfinite(loss)) and metrics["recon"] > 0 and metrics["kl"] > 0
    np.testing.assert_allclose(loss, metrics["recon"] + 0.5 * metrics["kl"], rtol=1e-6)
    # IS term: 0 where exp(log_var) == x, positive otherwise; KL: 0 where q == p.
    exact = dict(out, log_var=jnp.log(x), z_mean=out["prior_mean"], z_logvar=out["prior_logvar"])
    _, m = dvae.dvae_loss(exact, x, beta=1.0, eps=0.0)
    assert abs(float(m["recon"])) < 1e-5 * F and abs(float(m["kl"])) < 1e-6
    _, m = dvae.dvae_loss(dict(exact, log_var=jnp.log(x) + 0.1), x, beta=1.0, eps=0.0)
    np.testing.assert_allclose(m["recon"], F * (np.exp(-0.1) + 0.1 - 1), rtol=1e-4)  # d_IS(x | x e^0.1)
    # Hand-computed KL of one frame: N(1, e^0) against N(0, e^{-2}), per dimension
    # 1/2 (-2 - 0 + e^{2} + e^{2} - 1), summed over Z and averaged over the frames.
    q = dict(exact, z_mean=jnp.ones((2, 5, Z)), z_logvar=jnp.zeros((2, 5, Z)), prior_logvar=jnp.full((2, 5, Z), -2.0))
    q["prior_mean"] = jnp.zeros((2, 5, Z))
    _, m = dvae.dvae_loss(q, x, beta=1.0, eps=0.0)
    np.testing.assert_allclose(m["kl_z"], Z * 0.5 * (-2 + 2 * np.exp(2.0) - 1), rtol=1e-5)
    # DSAE: the static KL enters once per sequence (/ T per frame).
    out = _apply("DSAE", x, sample=True)
    _, m = dvae.dvae_loss(out, x)
    np.testing.assert_allclose(m["kl"], m["kl_z"] + m["kl_v"] / 5, rtol=1e-6)


@pytest.mark.parametrize("name", ["SRNN_ss", "VRNN", "DSAE"])
def test_loss_gradients_are_finite(name):
    model, variables = _init(name)
    x = _power(2, 5)
    kw = {"use_pred": 0.5} if name == "SRNN_ss" else {}

    def loss(params):
        out = model.apply({"params": params}, x, rngs={"sample": KEY}, **kw)
        return dvae.dvae_loss(out, x, beta=0.3)[0]

    grads = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves) and any(bool(jnp.any(g != 0)) for g in leaves)


# ----------------------------------------------------------------------------------------- converter ---


@pytest.mark.parametrize("name", sorted(TINY))
def test_converter_round_trip_and_inferred_config(name):
    model, variables = _init(name)
    sd = torch_state_dict(variables["params"])
    assert all("/" not in k for k in sd)
    converted = convert_dvae.dvae_variables(sd, model)
    jax.tree.map(np.testing.assert_array_equal, converted, jax.tree.map(np.asarray, dict(variables)))
    cfg = convert_dvae.infer_dvae_config(sd, **({"scheduled_sampling": True} if name == "SRNN_ss" else {}))
    assert _fields(dvae.build_model(cfg)) == _fields(model)


def _fields(model):
    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}


def test_converter_errors_name_the_tensor():
    model, variables = _init("SRNN")
    sd = torch_state_dict(variables["params"])
    bad = dict(sd, **{"mlp_hz_x.linear0.weight": np.zeros((8, 5), np.float32)})
    with pytest.raises(ValueError, match=r"mlp_hz_x\.linear0\.weight has torch shape \(8, 5\).*expects \(9, 8\)"):
        convert_dvae.dvae_variables(bad, model)
    bad = dict(sd, **{"rnn_g.weight_hh_l0": np.zeros((20, 4), np.float32)})
    with pytest.raises(ValueError, match=r"rnn_g\.weight_hh_l0 has torch shape \(20, 4\).*expects \(20, 5\)"):
        convert_dvae.dvae_variables(bad, model)
    missing = {k: v for k, v in sd.items() if k != "prior_logvar.bias"}
    with pytest.raises(ValueError, match=r"missing prior_logvar/bias \(expected shape \(3,\)\)"):
        convert_dvae.dvae_variables(missing, model)
    extra = dict(sd, **{"rnn_h.weight_ih_l0_reverse": np.zeros((24, 9), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected tensor rnn_h\.weight_ih_l0_reverse"):
        convert_dvae.dvae_variables(extra, model)
    with pytest.raises(ValueError, match="running_mean"):
        convert_sd.torch_to_flax({"bn.running_mean": np.zeros(3)})


def test_state_dict_files(tmp_path):
    model, variables = _init("VAE")
    sd = torch_state_dict(variables["params"])
    np.savez(tmp_path / "w.npz", **sd)
    loaded = convert_sd.load_state_dict(tmp_path / "w.npz")
    assert loaded.keys() == sd.keys() and all(np.array_equal(loaded[k], sd[k]) for k in sd)
    try:
        import torch  # noqa: F401
    except ImportError:
        (tmp_path / "w.pt").write_bytes(b"")
        with pytest.raises(ImportError, match="needs PyTorch"):
            convert_sd.load_state_dict(tmp_path / "w.pt")


# --------------------------------------------------------------------------------------------- DSAE ---


def test_dsae_equals_numpy_reference():
    """DSAE has no released weights: its data flow against a NumPy transcription of the authors' one."""
    model, variables = _init("DSAE")
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    x = np.asarray(_power(2, 6), np.float64)
    eps, eps_v = np.random.default_rng(3).normal(size=(2, 6, Z)), np.random.default_rng(4).normal(size=(2, 2))
    out = model.apply(variables, jnp.asarray(x, jnp.float32), eps=eps, eps_v=eps_v)

    def lin(q, a):
        return a @ q["kernel"] + q["bias"]

    def mlp(name, a):  # an empty MLP (the identity) has no parameters
        q = p.get(name, {})
        for i in range(len(q)):
            a = np.tanh(lin(q[f"linear{i}"], a))
        return a

    xt = x.swapaxes(0, 1)
    f = mlp("mlp_x", xt)
    g_v = _np_layer(p["rnn_g_v"], f, bidirectional=True)
    h_v = mlp("mlp_gv_v", np.concatenate([g_v[-1, :, :6], g_v[0, :, 6:]], -1))
    v_mean, v_logvar = lin(p["inf_v_mean"], h_v), lin(p["inf_v_logvar"], h_v)
    v = v_mean + np.exp(0.5 * v_logvar) * eps_v
    vt = np.broadcast_to(v, (6,) + v.shape)
    g = _np_layer(p["rnn_g_xv"], mlp("mlp_xv_gxv", np.concatenate([f, vt], -1)), bidirectional=True)
    g = _np_rnn(p["rnn_g_z"], mlp("mlp_gxv_gz", g))
    z_mean, z_logvar = lin(p["inf_z_mean"], g), lin(p["inf_z_logvar"], g)
    z = z_mean + np.exp(0.5 * z_logvar) * eps.swapaxes(0, 1)
    h = _np_lstm(p["rnn_prior"], np.concatenate([np.zeros_like(z[:1]), z[:-1]]))
    want = dict(
        v=v,
        z=z.swapaxes(0, 1),
        prior_mean=lin(p["prior_mean"], h).swapaxes(0, 1),
        log_var=lin(p["gen_logvar"], mlp("mlp_vz_x", np.concatenate([vt, z], -1))).swapaxes(0, 1),
    )
    for k, w in want.items():
        np.testing.assert_allclose(out[k], w, rtol=1e-4, atol=1e-4, err_msg=k)


# ------------------------------------------------------------------------------------ parity goldens ---

FIXTURES = [
    "dvae/VAE",
    "dvae/DKF",
    "dvae/STORN",
    "dvae/VRNN",
    "dvae/SRNN",
    "dvae/RVAE-Causal",
    "dvae/RVAE-NonCausal",
    *(f"dvae_se/{c}_{m}" for c in ("vb", "wsj") for m in ("vae", "dkf", "rvae", "srnn")),
]
PRESET_OF = {
    **{f: f for f in FIXTURES if f.startswith("dvae/")},
    **{f"dvae_se/{c}_{m}": f"dvae_se/{m.upper()}" for c in ("vb", "wsj") for m in ("vae", "dkf", "rvae", "srnn")},
}
OUTPUT_KEYS = dict(
    z="z",
    z_mean="z_mean",
    z_logvar="z_logvar",
    z_mean_p="prior_mean",
    z_logvar_p="prior_logvar",
    h_inf="h",
    h_gen="h_gen",
)


def _ours(fixture, name, out, x, z_dim, beta):
    """Our value of the golden array ``name`` (authors' layout), or None if we do not produce it."""
    se = fixture.startswith("dvae_se/")
    if name == "y":  # DVAE_SE returns the log-variance, the DVAE benchmark the variance
        return out["log_var"] if se else jnp.exp(out["log_var"])
    if name in OUTPUT_KEYS:
        return out[OUTPUT_KEYS[name]]
    # DVAE_SE adds 1e-10 to the variance, the DVAE benchmark nothing. The authors' KL omits the closed
    # form's +1 (+ z_dim / 2 per frame); DVAE_SE sums instead of averaging.
    _, m = dvae.dvae_loss(out, x, beta=1.0, eps=0.0, variance_eps=1e-10 if se else 0.0)
    recon, kl = m["recon"], m["kl"] + z_dim / 2
    frames = x.shape[0] * x.shape[1]
    return {
        "loss_recon": recon,
        "loss_KLD": kl * (frames if se else 1),
        "loss_tot": recon + beta * kl,
        "loss_ISD": recon * frames,
    }.get(name)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_parity_with_released_models(fixture):
    path, meta, inputs, golden = load_fixture(fixture)
    weights = convert_sd.load_state_dict(os.path.join(path, "weights.npz"))
    se = fixture.startswith("dvae_se/")

    cfg = convert_dvae.infer_dvae_config(weights, meta["architecture"]["config"])
    assert _fields(dvae.build_model(cfg)) == _fields(dvae.build_model(PRESET_OF[fixture])), "PRESETS differ"
    model = dvae.build_model(cfg)
    variables = convert_dvae.dvae_variables(weights, model)

    # Authors' layouts: DVAE (B, F, T), DVAE_SE time-major (T, B, F); ours (B, T, F).
    def ours_layout(a):
        return a.swapaxes(0, 1) if se else a.swapaxes(1, 2)

    x = jnp.asarray(ours_layout(inputs["x"]))
    # One call per prefix; DVAE_SE's SRNN_ss forward uses its prediction (use_pred=1), "tf." teacher-forces.
    ss = {"use_pred": 1.0} if cfg.get("scheduled_sampling") else {}
    calls = {"": dict(sample=False, **ss)}
    if "eps" in inputs:  # (T, B, Z): eps[t, b] is the noise of z_t, in call order
        calls["noise."] = dict(eps=inputs["eps"].swapaxes(0, 1), **ss)
    if ss:
        calls["tf."] = dict(sample=False, use_pred=0.0)
    floors = meta["noise_floor_fp64"]["arrays"]
    beta = float(meta["architecture"].get("beta", 1.0))
    checked, report = set(), []
    with jax.default_matmul_precision("highest"):  # a no-op on CPU; keeps GPUs off TF32
        for prefix, kw in calls.items():
            out = model.apply(variables, x, rngs={"sample": KEY}, **kw)
            for name, want in golden.items():
                base = name[len(prefix) :]
                if not name.startswith(prefix) or "." in base:
                    continue
                ours = _ours(fixture, base, out, x, model.z_dim, beta)
                if ours is None:
                    continue
                want = want if want.ndim == 0 else ours_layout(want)
                diff = max_abs_diff(ours, want)
                floor = floors[name]
                tol = tolerance(floor)
                report.append((name, diff, floor["max_abs_fp32_vs_fp64"], tol))
                assert diff <= tol, f"{fixture} {name}: max |diff| {diff:.3g} > {tol:.3g} (floor {floor})"
                checked.add(name)
    assert checked == set(golden), f"not reproduced: {sorted(set(golden) - checked)}"
    by_floor = max(report, key=lambda r: r[1] / r[2] if r[2] else 0.0)
    by_tol = max(report, key=lambda r: r[1] / r[3] if r[3] else 0.0)
    print(
        f"\n{fixture}: {len(report)} arrays; largest |diff| / floor: {by_floor[0]} {by_floor[1]:.3g} = "
        f"{by_floor[1] / by_floor[2]:.2f} x; largest |diff| / tolerance: {by_tol[0]} {by_tol[1] / by_tol[3]:.2f}"
    )


def test_config_ini_is_read_and_checked(tmp_path):
    path = parity_dir("dvae_se/vb_rvae")
    meta = json.load(open(os.path.join(path, "meta.json")))
    weights = convert_sd.load_state_dict(os.path.join(path, "weights.npz"))
    parser = configparser.ConfigParser()
    parser["Network"] = meta["architecture"]["config"]
    parser["Training"] = {"beta": "0.01"}
    with open(tmp_path / "config.ini", "w") as f:
        parser.write(f)
    assert convert_dvae.infer_dvae_config(weights, tmp_path / "config.ini") == convert_dvae.infer_dvae_config(
        weights, meta["architecture"]["config"]
    )
    # The repository's cfg_voicebank_rvaeNC.ini says z_dim 30; the released weights have 16.
    with pytest.raises(ValueError, match=r"z_dim = '30' but the weights say 16"):
        convert_dvae.infer_dvae_config(weights, dict(meta["architecture"]["config"], z_dim="30"))
    srnn = convert_sd.load_state_dict(os.path.join(parity_dir("dvae_se/wsj_srnn"), "weights.npz"))
    assert convert_dvae.infer_dvae_config(srnn, {"tag": "SRNN-ss"})["scheduled_sampling"] is True
    assert "scheduled_sampling" not in convert_dvae.infer_dvae_config(srnn, {"tag": "SRNN"})
