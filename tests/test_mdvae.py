"""MDVAE family: Gaussian utilities, shapes, parameter count, causality, latent swaps,
generation, training, input validation ([MDVAE] Sec. 2 and App. A.2; [Sadok-thesis] Table B.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from avrep.models import mdvae
from avrep.nn import gaussian


def _key(seed):
    # RBG keys: the tiny models' init compiles ~2x faster than with threefry keys (measured).
    return jax.random.key(seed, impl="rbg")


KEY = _key(0)

# Small, all-distinct sizes so that a mixed-up dimension shows up as a shape error.
TINY = dict(
    dim_audio=6,
    dim_visual=10,
    dim_w=4,
    dim_zav=3,
    dim_za=2,
    dim_zv=5,
    visual_feature_hidden=(9, 7),
    w_gru_hidden=8,
    w_head_hidden=6,
    gru_hidden=5,
    zav_prior_hidden=(4,),
    zav_posterior_hidden=(6, 5),
    za_prior_hidden=(3,),
    za_posterior_hidden=(7, 4),
    zv_prior_hidden=(4,),
    zv_posterior_hidden=(6, 3),
    audio_decoder_hidden=(7,),
    visual_decoder_hidden=(8, 9),
)
B, T = 3, 7


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def _inputs(batch=B, time=T, key=KEY):
    ka, kv = jax.random.split(key)
    return (
        jax.random.normal(ka, (batch, time, TINY["dim_audio"])),
        jax.random.normal(kv, (batch, time, TINY["dim_visual"])),
    )


def _jit_apply(model):
    """model.apply, compiled once per (method, sample, steps, shapes) and shared by the tests."""
    return jax.jit(model.apply, static_argnames=("method", "sample", "steps"))


@pytest.fixture(scope="module")
def tiny():
    model = mdvae.MDVAE(**TINY)
    x_a, x_v = _inputs()
    variables = jax.jit(model.init)({"params": KEY, "sample": KEY}, x_a, x_v)
    return _jit_apply(model), variables


# ---------------------------------------------------------------- gaussian ---


def test_reparameterized_samples_have_the_right_moments():
    mean, logvar = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.0, 1.0, -1.5])
    z = gaussian.sample(KEY, jnp.broadcast_to(mean, (200_000, 3)), logvar)
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(z.var(0), np.exp(logvar), rtol=0.02)


def test_kl_hand_computed():
    # KL(N(1, 2) || N(0, 1)) = (2 + 1 - 1 - log 2) / 2
    kl = gaussian.kl_divergence(jnp.array([1.0]), jnp.log(jnp.array([2.0])))
    np.testing.assert_allclose(kl, (2.0 - np.log(2.0)) / 2, rtol=1e-6)
    # KL(N(0, 1) || N(3, 4)) = (log 4 + (1 + 9) / 4 - 1) / 2, summed over the event axis
    kl = gaussian.kl_divergence(jnp.zeros((2, 2)), jnp.zeros((2, 2)), 3.0, jnp.log(4.0))
    np.testing.assert_allclose(kl, [np.log(4) + 10 / 4 - 1] * 2, rtol=1e-6)


def test_kl_matches_monte_carlo():
    mq, lq = jnp.array([0.5, -1.0, 2.0]), jnp.array([0.3, -0.7, 0.1])
    mp, lp = jnp.array([-0.2, 0.4, 1.0]), jnp.array([-0.4, 0.5, 0.8])
    z = gaussian.sample(KEY, jnp.broadcast_to(mq, (400_000, 3)), lq)
    mc = jnp.mean(gaussian.gaussian_log_likelihood(z, mq, lq) - gaussian.gaussian_log_likelihood(z, mp, lp))
    np.testing.assert_allclose(gaussian.kl_divergence(mq, lq, mp, lp), mc, rtol=0.02)


def test_kl_is_zero_when_posterior_equals_prior():
    m, lv = jax.random.normal(KEY, (4, 6, 3)), jax.random.normal(_key(1), (4, 6, 3))
    np.testing.assert_allclose(gaussian.kl_divergence(m, lv, m, lv), 0.0, atol=1e-6)
    latents = dict(
        w=dict(mean=jnp.zeros((4, 2)), logvar=jnp.zeros((4, 2))),
        z=dict(mean=m, logvar=lv, prior_mean=m, prior_logvar=lv),
    )
    outputs = dict(recon={"audio": jnp.zeros((4, 6, 5))}, latents=latents)
    terms = mdvae.mdvae_loss(outputs, {"audio": jnp.zeros((4, 6, 5))})
    np.testing.assert_allclose([terms["kl_w"], terms["kl_z"]], 0.0, atol=1e-6)


def test_log_likelihood_against_scipy():
    x, mean = jax.random.normal(KEY, (5, 4)), jax.random.normal(_key(1), (5, 4))
    np.testing.assert_allclose(gaussian.gaussian_log_likelihood(x, mean), stats.norm.logpdf(x, mean).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(
        gaussian.gaussian_nll(x, mean), 0.5 * np.sum((x - mean) ** 2, -1) + 2 * np.log(2 * np.pi), rtol=1e-5
    )
    logvar = jnp.full((5, 4), 0.6)
    np.testing.assert_allclose(
        gaussian.gaussian_log_likelihood(x, mean, logvar), stats.norm.logpdf(x, mean, np.exp(0.3)).sum(-1), rtol=1e-5
    )


# -------------------------------------------------------------------- loss ---


def test_loss_normalizations_and_beta():
    b, t, d = 2, 3, 4
    x = jax.random.normal(KEY, (b, t, d))
    x_hat = x + 0.5
    m = jax.random.normal(_key(2), (b, t, 2))
    latents = dict(
        w=dict(mean=jnp.ones((b, 3)), logvar=jnp.zeros((b, 3))),  # KL_w = 1.5 each
        z=dict(mean=m, logvar=jnp.zeros_like(m), prior_mean=jnp.zeros_like(m), prior_logvar=jnp.zeros_like(m)),
    )
    outputs = dict(recon={"visual": x_hat}, latents=latents)
    sse = b * t * d * 0.25
    kl_z = 0.5 * float(jnp.sum(m**2))
    elbo = mdvae.mdvae_loss(outputs, {"visual": x}, beta=0.5)
    np.testing.assert_allclose(elbo["recon_visual"], (0.5 * sse + 0.5 * b * t * d * np.log(2 * np.pi)) / b, rtol=1e-6)
    np.testing.assert_allclose(elbo["kl_w"], 1.5, rtol=1e-6)
    np.testing.assert_allclose(elbo["kl_z"], kl_z / b, rtol=1e-6)
    np.testing.assert_allclose(elbo["loss"], elbo["recon_visual"] + 0.5 * (1.5 + kl_z / b), rtol=1e-6)
    code = mdvae.mdvae_loss(outputs, {"visual": x}, normalization="code")
    np.testing.assert_allclose(code["recon_visual"], sse / (b * t), rtol=1e-6)
    np.testing.assert_allclose(code["kl_w"], 1.5, rtol=1e-6)  # per sequence: weighted by T
    np.testing.assert_allclose(code["kl_z"], kl_z / (b * t), rtol=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        mdvae.mdvae_loss(outputs, {"visual": x}, normalization="sum")
    with pytest.raises(ValueError, match=r"targets\['visual'\]"):
        mdvae.mdvae_loss(outputs, {"visual": x[:, :2]})


def test_calibrated_likelihood_weights_each_modality_by_its_own_error():
    b, t = 2, 3
    x = {"audio": jax.random.normal(KEY, (b, t, 4)), "visual": jax.random.normal(_key(1), (b, t, 6))}
    err = {"audio": 2.0, "visual": 0.1}  # squared errors 4 and 0.01
    outputs = dict(
        recon={m: v + err[m] for m, v in x.items()},
        latents=dict(w=dict(mean=jnp.zeros((b, 3)), logvar=jnp.zeros((b, 3)))),
    )
    terms = mdvae.mdvae_loss(outputs, x, likelihood="calibrated")
    for m, v in x.items():  # variance = the mean squared error: NLL = D T / 2 (log 2 pi var + 1) per sequence
        n = t * v.shape[-1]
        np.testing.assert_allclose(terms[f"recon_{m}"], 0.5 * n * (np.log(2 * np.pi * err[m] ** 2) + 1), rtol=1e-5)

    def loss(recon, likelihood):
        return mdvae.mdvae_loss(dict(outputs, recon=recon), x, likelihood=likelihood)["loss"]

    unit = jax.grad(loss)(outputs["recon"], "unit")
    calibrated = jax.grad(loss)(outputs["recon"], "calibrated")
    for m in x:  # the gradient is the unit-variance one divided by the modality's own error (held constant)
        np.testing.assert_allclose(calibrated[m], unit[m] / err[m] ** 2, rtol=1e-5)
    per_modality = mdvae.mdvae_loss(outputs, x, likelihood="visual=calibrated")
    np.testing.assert_allclose(per_modality["recon_visual"], terms["recon_visual"], rtol=1e-6)
    np.testing.assert_allclose(per_modality["recon_audio"], mdvae.mdvae_loss(outputs, x)["recon_audio"], rtol=1e-6)
    with pytest.raises(ValueError, match="needs normalization='elbo'"):
        mdvae.mdvae_loss(outputs, x, likelihood="calibrated", normalization="code")
    with pytest.raises(ValueError, match="per modality"):
        mdvae.mdvae_loss(outputs, x, likelihood="video=calibrated")


# ------------------------------------------------------------------ MDVAE ---


def test_mdvae_output_shapes(tiny):
    apply, variables = tiny
    x_a, x_v = _inputs()
    out = apply(variables, x_a, x_v, rngs={"sample": KEY})
    assert out["recon"]["audio"].shape == (B, T, 6)
    assert out["recon"]["visual"].shape == (B, T, 10)
    lat = out["latents"]
    assert {k: v.shape for k, v in lat["w"].items()} == {k: (B, 4) for k in ("mean", "logvar", "sample")}
    for name, dim in (("z_av", 3), ("z_a", 2), ("z_v", 5)):
        shapes = {k: v.shape for k, v in lat[name].items()}
        assert shapes == {
            **{k: (B, T, dim) for k in ("mean", "logvar", "prior_mean", "prior_logvar", "sample")},
            "state": (B, 5),
        }, name
    assert not np.allclose(lat["z_a"]["sample"], lat["z_a"]["mean"])
    terms = mdvae.mdvae_loss(out, {"audio": x_a, "visual": x_v})
    assert set(terms) == {"loss", "recon_audio", "recon_visual", "kl_w", "kl_z_av", "kl_z_a", "kl_z_v"}
    assert all(np.isfinite(v) for v in terms.values())
    # the first prior p(z_1) = N(MLP(h_1 = 0)) is the same for every sequence
    p0 = lat["z_av"]["prior_logvar"][:, 0]
    np.testing.assert_allclose(p0[0], p0[1], rtol=1e-6)

    means = apply(variables, x_a, x_v, sample=False)  # no RNG needed
    for name in ("w", "z_av", "z_a", "z_v"):
        np.testing.assert_array_equal(means["latents"][name]["sample"], means["latents"][name]["mean"])

    gen = apply(variables, lat["w"]["sample"], steps=4, method="generate", rngs={"sample": KEY})
    assert gen["recon"]["audio"].shape == (B, 4, 6) and gen["recon"]["visual"].shape == (B, 4, 10)
    assert {n: v["sample"].shape for n, v in gen["latents"].items()} == dict(
        z_av=(B, 4, 3), z_a=(B, 4, 2), z_v=(B, 4, 5)
    )
    cont = apply(variables, x_a, x_v, steps=4, method="continue_sequence", rngs={"sample": KEY})
    assert cont["audio"].shape == (B, T + 4, 6) and cont["visual"].shape == (B, T + 4, 10)


def _paper_counts():
    """[Sadok-thesis] Table B.3 block table with PyTorch's layer sizes (GRU: 3 gates, 2 biases each)."""

    def linear(i, o):
        return i * o + o

    def gru(i, h):
        return 3 * (i * h + h * h + 2 * h)

    def heads(i, d):  # mean and (log)variance Linears
        return 2 * linear(i, d)

    r_v = r_a = 512
    h = 128
    l_w, l_av, l_a, l_v = 84, 16, 8, 8
    return dict(
        B1=linear(2048, 1024) + linear(1024, 512),
        B3=2 * gru(r_v + r_a, 256) + linear(512, 256) + heads(256, l_w),
        B4=gru(l_av, h) + linear(h, 64) + heads(64, l_av),
        B5=linear(r_v + r_a + h + l_w, 256) + linear(256, 128) + heads(128, l_av),
        B6=gru(l_a, h) + linear(h, 32) + heads(32, l_a),
        B7=linear(r_a + h + l_w + l_av, 128) + linear(128, 32) + heads(32, l_a),  # z_av included
        B8=gru(l_v, h) + linear(h, 64) + heads(64, l_v),
        B9=linear(r_v + h + l_w + l_av, 256) + linear(256, 128) + heads(128, l_v),  # z_av included
        B10=linear(l_v + l_av + l_w, 512) + linear(512, 1024) + linear(1024, 2048),
        B11=linear(l_a + l_av + l_w, 128) + linear(128, 256) + linear(256, 512),
    )


def _param_shapes(model, time=2):
    x_a = jax.ShapeDtypeStruct((1, time, model.dim_audio), jnp.float32)
    x_v = jax.ShapeDtypeStruct((1, time, model.dim_visual), jnp.float32)
    return jax.eval_shape(lambda a, v: model.init({"params": KEY, "sample": KEY}, a, v), x_a, x_v)["params"]


def test_paper_parameter_count():
    blocks = _paper_counts()
    # rounded per-block counts (ours, computed from [Sadok-thesis] Table B.3)
    spec = dict(B1=2.62e6, B3=2.14e6, B4=66e3, B5=354e3, B6=58e3, B7=100e3, B8=62e3, B9=225e3, B10=2.68e6, B11=179e3)
    for name, n in blocks.items():
        digits = -4 if spec[name] >= 1e6 else -3
        assert round(n, digits) == spec[name], name
    assert sum(blocks.values()) == 8_489_704

    params = _param_shapes(mdvae.MDVAE())
    total = _count(params)
    print(f"MDVAE parameters (paper sizes, l_v = 8, z_av in B7/B9): {total:,}")
    assert total == 8_489_704
    per_module = {k: _count(v) for k, v in params.items()}
    b = blocks
    assert per_module == dict(
        visual_features=b["B1"],
        w_encoder=b["B3"],
        z_av=b["B4"] + b["B5"],
        z_a=b["B6"] + b["B7"],
        z_v=b["B8"] + b["B9"],
        visual_decoder=b["B10"],
        audio_decoder=b["B11"],
    )
    # the table's B7 / B9 input sizes (no z_av): 16 fewer input rows in each first layer
    without = _count(_param_shapes(mdvae.MDVAE(zav_in_modal_posteriors=False)))
    assert total - without == 16 * (128 + 256)


def _z_params(latents, name, t):
    lat = latents[name]
    return {k: np.asarray(lat[k][:, t]) for k in ("mean", "logvar", "prior_mean", "prior_logvar", "sample")}


def test_dynamical_latents_are_causal_and_w_sees_everything(tiny):
    apply, variables = tiny
    x_a, x_v = _inputs()
    tau = 3  # change frame tau + 1 of both modalities
    y_a, y_v = x_a.at[:, tau + 1].add(1.0), x_v.at[:, tau + 1].add(1.0)
    w = jax.random.normal(_key(5), (B, 4))  # the dynamical posteriors are causal given w
    for sample in (False, True):  # means; samples with the same noise

        def enc(a, v):
            return apply(variables, a, v, sample=sample, w=w, method="encode", rngs={"sample": KEY})

        ref, new = enc(x_a, x_v), enc(y_a, y_v)
        for name in ("z_av", "z_a", "z_v"):
            for t in range(tau + 1):
                for k, v in _z_params(ref, name, t).items():
                    np.testing.assert_allclose(
                        _z_params(new, name, t)[k], v, rtol=1e-6, atol=1e-6, err_msg=f"{name}[{t}].{k}"
                    )
            # p(z_{tau+1} | z_<=tau) does not see frame tau + 1 either; q(z_{tau+1}) does
            np.testing.assert_allclose(
                new[name]["prior_mean"][:, tau + 1], ref[name]["prior_mean"][:, tau + 1], rtol=1e-6, atol=1e-6
            )
            assert not np.allclose(new[name]["mean"][:, tau + 1], ref[name]["mean"][:, tau + 1]), name

    # q(w | x) is bidirectional: it sees the first and the last frame
    def w_of(a, v):
        return apply(variables, a, v, sample=False, method="encode")["w"]["mean"]

    w_ref = w_of(x_a, x_v)
    assert not np.allclose(w_of(x_a.at[:, -1].add(1.0), x_v), w_ref)
    assert not np.allclose(w_of(x_a, x_v.at[:, 0].add(1.0)), w_ref)


def test_generate_continues_the_encoded_state(tiny):
    apply, variables = tiny
    x_a, x_v = _inputs()
    w = jax.random.normal(_key(5), (B, 4))

    def enc(a, v):
        return apply(variables, a, v, sample=False, w=w, method="encode")

    head, full = enc(x_a[:, : T - 1], x_v[:, : T - 1]), enc(x_a, x_v)
    state = {n: head[n]["state"] for n in ("z_av", "z_a", "z_v")}
    gen = apply(variables, w, steps=2, state=state, sample=False, method="generate")
    for n in state:  # the prior of frame T given the posterior samples of frames 1..T-1
        for k in ("prior_mean", "prior_logvar"):
            np.testing.assert_allclose(gen["latents"][n][k][:, 0], full[n][k][:, T - 1], rtol=1e-5, atol=1e-6)
    # from the zero state, the first generated prior is the learned p(z_1)
    gen0 = apply(variables, w, steps=2, sample=False, method="generate")
    np.testing.assert_allclose(
        gen0["latents"]["z_av"]["prior_mean"][:, 0], full["z_av"]["prior_mean"][:, 0], rtol=1e-5, atol=1e-6
    )


def test_decode_swapped_latents(tiny):
    apply, variables = tiny
    (a_a, a_v), (b_a, b_v) = _inputs(key=_key(1)), _inputs(key=_key(2))

    def enc(x, v):
        return apply(variables, x, v, method="encode", rngs={"sample": KEY})

    def dec(w, lat):
        return apply(variables, w, lat["z_av"]["sample"], lat["z_a"]["sample"], lat["z_v"]["sample"], method="decode")

    la, lb = enc(a_a, a_v), enc(b_a, b_v)
    # decode(encode(x)) is the forward pass
    out = apply(variables, a_a, a_v, rngs={"sample": KEY})
    np.testing.assert_allclose(dec(la["w"]["sample"], la)["visual"], out["recon"]["visual"], rtol=1e-6)
    # w of A with the dynamics of B
    swapped = dec(la["w"]["sample"], lb)
    assert swapped["audio"].shape == (B, T, 6) and swapped["visual"].shape == (B, T, 10)
    own_b = dec(lb["w"]["sample"], lb)
    assert not np.allclose(swapped["visual"], own_b["visual"])
    # z_av of A only
    mixed = apply(
        variables, lb["w"]["sample"], la["z_av"]["sample"], lb["z_a"]["sample"], lb["z_v"]["sample"], method="decode"
    )
    assert mixed["audio"].shape == (B, T, 6) and not np.allclose(mixed["audio"], own_b["audio"])
    # per-frame w: interpolation from w_A to w_B ([Sadok-thesis] App. B.3)
    alpha = jnp.linspace(1.0, 0.0, T)[None, :, None]
    w_t = alpha * la["w"]["sample"][:, None] + (1 - alpha) * lb["w"]["sample"][:, None]
    interp = dec(w_t, lb)
    np.testing.assert_allclose(interp["visual"][:, 0], swapped["visual"][:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(interp["visual"][:, -1], own_b["visual"][:, -1], rtol=1e-5, atol=1e-6)


def test_decoder_output_activation_field():
    model = mdvae.MDVAE(**TINY, decoder_output_activation=True)
    w, z_av, z_a, z_v = (
        jax.random.normal(_key(i), shape) for i, shape in enumerate([(B, 4), (B, T, 3), (B, T, 2), (B, T, 5)])
    )
    out, _ = model.init_with_output({"params": KEY}, w, z_av, z_a, z_v, method="decode")
    assert float(out["visual"].min()) >= 0.0  # the table's ReLU on B10's last layer
    assert float(jnp.abs(out["audio"]).max()) <= 1.0  # Tanh on B11's last layer
    assert float(out["visual"].max()) > 0.0


def _structured_batch(batch=4, time=6):
    """Sequences generated from one static and one dynamical factor, so a tiny
    MDVAE can fit them (i.i.d. noise would leave nothing to learn)."""
    ks = jax.random.split(_key(7), 4)
    static = jax.random.normal(ks[0], (batch, 1, 2))
    phase = jax.random.uniform(ks[1], (batch, 1, 1), maxval=6.0)
    dynamic = jnp.sin(0.9 * jnp.arange(time)[None, :, None] + phase)
    factors = jnp.concatenate([jnp.broadcast_to(static, (batch, time, 2)), dynamic], -1)
    return factors @ jax.random.normal(ks[2], (3, 6)), factors @ jax.random.normal(ks[3], (3, 10))


def test_jitted_training_decreases_the_loss():
    model = mdvae.MDVAE(**TINY, activations="code")
    x_a, x_v = _structured_batch()
    params = jax.jit(model.init)({"params": KEY, "sample": KEY}, x_a, x_v)["params"]
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            out = model.apply({"params": p}, x_a, x_v, rngs={"sample": key})
            terms = mdvae.mdvae_loss(out, {"audio": x_a, "visual": x_v}, beta=0.1, normalization="code")
            return terms["loss"], terms

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(30):
        params, opt_state, loss = step(params, opt_state, _key(i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_input_validation_names_the_field(tiny):
    apply, variables = tiny
    x_a, x_v = _inputs()

    def run(a, v):
        return apply(variables, a, v, sample=False)

    with pytest.raises(ValueError, match=r"x_visual has shape \(3, 6, 10\).*\[3, 7, dim_visual=10\]"):
        run(x_a, x_v[:, :6])
    with pytest.raises(ValueError, match=r"x_audio has shape \(3, 7, 5\).*dim_audio=6"):
        run(x_a[..., :5], x_v)
    with pytest.raises(ValueError, match=r"x_visual .*dim_visual=10"):
        run(x_a, x_v[..., :9])
    with pytest.raises(ValueError, match=r"x_audio .*expected \[batch, time, dim_audio=6\]"):
        run(x_a[:, 0], x_v)

    def z(d, t=T):
        return jnp.zeros((B, t, d))

    def dec(*a):
        return apply(variables, *a, method="decode")

    with pytest.raises(ValueError, match="z_a has shape .*dim_za=2"):
        dec(jnp.zeros((B, 4)), z(3), z(3), z(5))
    with pytest.raises(ValueError, match=r"z_v has shape .*\[3, 7, dim_zv=5\]"):
        dec(jnp.zeros((B, 4)), z(3), z(2), z(5, 4))
    with pytest.raises(ValueError, match="w has shape .*dim_w=4"):
        dec(jnp.zeros((B, 5)), z(3), z(2), z(5))
    with pytest.raises(ValueError, match="encode: w has shape .*dim_w=4"):
        apply(variables, x_a, x_v, w=jnp.zeros((B, T, 4)), method="encode", sample=False)
    with pytest.raises(ValueError, match="MDVAE.activations='gelu'"):
        mdvae.MDVAE(activations="gelu")


# --------------------------------------------------------------- baselines ---


def test_dsae_shapes_and_causality():
    preset = {**mdvae.DSAE_PRESETS["audio"], "dim_x": 6, "decoder_hidden": (7,)}
    model = mdvae.DSAE(
        **preset,
        dim_w=4,
        w_gru_hidden=5,
        w_head_hidden=4,
        dim_z=3,
        gru_hidden=5,
        prior_hidden=(4,),
        posterior_hidden=(6, 4),
    )
    apply = _jit_apply(model)
    x, _ = _inputs()
    variables = jax.jit(model.init)({"params": KEY, "sample": KEY}, x)
    out = apply(variables, x, rngs={"sample": KEY})
    assert out["recon"]["audio"].shape == (B, T, 6)
    assert out["latents"]["w"]["sample"].shape == (B, 4)
    assert out["latents"]["z"]["prior_logvar"].shape == (B, T, 3)
    assert out["latents"]["z"]["state"].shape == (B, 5)
    terms = mdvae.mdvae_loss(out, {"audio": x})
    assert set(terms) == {"loss", "recon_audio", "kl_w", "kl_z"}
    w = jnp.ones((B, 4))

    def enc(v):
        return apply(variables, v, sample=False, w=w, method="encode")["z"]["mean"]

    ref, new = enc(x), enc(x.at[:, 4].add(1.0))
    np.testing.assert_allclose(new[:, :4], ref[:, :4], rtol=1e-6, atol=1e-6)
    assert not np.allclose(new[:, 4], ref[:, 4])
    gen = apply(variables, w, steps=5, method="generate", rngs={"sample": KEY})
    assert gen["recon"]["audio"].shape == (B, 5, 6)
    with pytest.raises(ValueError, match="x has shape .*dim_x=6"):
        apply(variables, x[..., :4], sample=False)


def test_dsae_visual_parameter_count():
    # B1, B3 on r (512), a z chain shaped like B4 + B5 on [h, w, r], B10 on [z, w]
    def linear(i, o):
        return i * o + o

    def gru(i, h):
        return 3 * (i * h + h * h + 2 * h)

    expected = (
        linear(2048, 1024)
        + linear(1024, 512)
        + 2 * gru(512, 256)
        + linear(512, 256)
        + 2 * linear(256, 84)
        + gru(16, 128)
        + linear(128, 64)
        + 2 * linear(64, 16)
        + linear(128 + 84 + 512, 256)
        + linear(256, 128)
        + 2 * linear(128, 16)
        + linear(16 + 84, 512)
        + linear(512, 1024)
        + linear(1024, 2048)
    )
    model = mdvae.DSAE()
    x = jax.ShapeDtypeStruct((1, 2, 2048), jnp.float32)
    params = jax.eval_shape(lambda v: model.init({"params": KEY, "sample": KEY}, v), x)["params"]
    assert _count(params) == expected


def test_jointmvae_frames_are_independent_and_loss_terms():
    model = mdvae.JointMVAE(
        dim_audio=6,
        dim_visual=10,
        dim_z=3,
        visual_feature_hidden=(8,),
        encoder_hidden=(5,),
        audio_decoder_hidden=(4,),
        visual_decoder_hidden=(7,),
    )
    apply = _jit_apply(model)
    x_a, x_v = _inputs()
    variables = jax.jit(model.init)({"params": KEY, "sample": KEY}, x_a, x_v)
    out = apply(variables, x_a, x_v, rngs={"sample": KEY})
    assert out["recon"]["audio"].shape == (B, T, 6) and out["recon"]["visual"].shape == (B, T, 10)
    assert out["latents"]["z"]["sample"].shape == (B, T, 3)
    assert out["unimodal"]["visual"]["logvar"].shape == (B, T, 3)
    terms = mdvae.jointmvae_loss(out, {"audio": x_a, "visual": x_v}, alpha=0.3)
    base = mdvae.mdvae_loss(out, {"audio": x_a, "visual": x_v})
    assert base["kl_z"] > 0 and terms["kl_unimodal_audio"] > 0
    np.testing.assert_allclose(
        terms["loss"], base["loss"] + 0.3 * (terms["kl_unimodal_audio"] + terms["kl_unimodal_visual"]), rtol=1e-6
    )

    # no temporal model: changing frame 2 changes only frame 2
    def recon(a, v):
        return apply(variables, a, v, sample=False)["recon"]["audio"]

    ref, new = recon(x_a, x_v), recon(x_a, x_v.at[:, 2].add(1.0))
    changed = np.any(~np.isclose(new, ref, rtol=1e-6, atol=1e-6), axis=(0, 2))
    assert changed.tolist() == [t == 2 for t in range(T)]
    # cross-modal inference from audio alone
    q_a = apply(variables, x_a, sample=False, method="encode")
    np.testing.assert_allclose(q_a["mean"], out["unimodal"]["audio"]["mean"], rtol=1e-6)
    with pytest.raises(ValueError, match="x_visual has shape .*dim_visual=10"):
        apply(variables, x_a, x_v[:, :, :3], sample=False)


def test_window_starts_cover_every_frame_once_from_the_first_window():
    from avrep.evaluation.sequence import window_starts

    assert window_starts(30, 30) == [0]
    assert window_starts(60, 30) == [0, 30]
    assert window_starts(71, 30) == [0, 30, 41]
    for n in range(30, 200, 7):
        starts = window_starts(n, 30)
        covered = np.zeros(n, int)
        for s in starts:
            covered[s : s + 30] += 1
        assert covered.min() >= 1 and starts[-1] + 30 == n and all(s + 30 <= n for s in starts)
