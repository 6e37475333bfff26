"""EMA vector quantiser: assignment, EMA arithmetic, gradients, statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avrep.nn.quantizer import VectorQuantizerEMA

EPS = 1e-5


def _variables(codebook, cluster_size=None, embed_sum=None):
    codebook = jnp.asarray(codebook, jnp.float32)
    return {
        "vq_ema": {
            "codebook": codebook,
            "cluster_size": (
                jnp.zeros(codebook.shape[0]) if cluster_size is None else jnp.asarray(cluster_size, jnp.float32)
            ),
            "embed_sum": codebook if embed_sum is None else jnp.asarray(embed_sum),
        }
    }


def test_init_collections():
    vq = VectorQuantizerEMA(num_codes=512, code_dim=32)
    v = vq.init(jax.random.PRNGKey(0), jnp.zeros((4, 32)), train=True)
    assert set(v) == {"vq_ema"}  # nothing in "params": no gradient to codes
    ema = v["vq_ema"]
    assert ema["codebook"].shape == (512, 32)
    np.testing.assert_allclose(np.std(ema["codebook"]), 1.0, atol=0.02)
    np.testing.assert_array_equal(ema["embed_sum"], ema["codebook"])
    np.testing.assert_array_equal(ema["cluster_size"], np.zeros(512))


def test_nearest_code_assignment():
    vq = VectorQuantizerEMA(num_codes=4, code_dim=2)
    v = _variables([[0, 0], [1, 0], [0, 1], [5, 5]])
    z = jnp.array([[[0.1, 0.1], [0.9, 0.2], [0.2, 1.3]], [[4.0, 4.0], [0.6, 0.45], [-3.0, 0.4]]])
    expected = np.array([[0, 1, 2], [3, 1, 0]])
    out = vq.apply(v, z, train=False)
    np.testing.assert_array_equal(out["indices"], expected)
    assert out["indices"].dtype == jnp.int32
    np.testing.assert_array_equal(vq.apply(v, z, method="lookup"), expected)
    np.testing.assert_array_equal(out["z_q"], np.asarray(v["vq_ema"]["codebook"])[expected])
    np.testing.assert_array_equal(vq.apply(v, jnp.array([3, 0]), method="quantize_indices"), [[5, 5], [0, 0]])


def test_ema_update_two_steps_by_hand():
    # decay 0.5; codes 0, 1 used, code 2 unused (its smoothed count is ~eps).
    vq = VectorQuantizerEMA(num_codes=3, code_dim=2, decay=0.5, epsilon=EPS)
    v = _variables([[0, 0], [10, 0], [0, 10]])

    z1 = jnp.array([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]])  # -> codes 0, 0, 1
    out, upd = vq.apply(v, z1, train=True, mutable=["vq_ema"])
    np.testing.assert_array_equal(out["indices"], [0, 0, 1])
    ema = upd["vq_ema"]
    # cluster_size = 0.5*0 + 0.5*[2, 1, 0]; embed_sum = 0.5*cb + 0.5*sums.
    np.testing.assert_allclose(ema["cluster_size"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(ema["embed_sum"], [[0.5, 0.5], [9.5, 0.5], [0.0, 5.0]])
    n = 1.5
    smoothed = (np.array([1.0, 0.5, 0.0]) + EPS) / (n + 3 * EPS) * n
    np.testing.assert_allclose(
        ema["codebook"], np.array([[0.5, 0.5], [9.5, 0.5], [0, 5]]) / smoothed[:, None], rtol=1e-6
    )
    np.testing.assert_allclose(ema["codebook"][:2], [[0.5, 0.5], [19, 1]], rtol=1e-4)
    np.testing.assert_allclose(ema["codebook"][2, 1], 5.0 / EPS, rtol=1e-4)

    z2 = jnp.array([[0.4, 0.6], [18.0, 2.0]])  # -> codes 0, 1 (new codebook)
    out, upd = vq.apply(upd, z2, train=True, mutable=["vq_ema"])
    np.testing.assert_array_equal(out["indices"], [0, 1])
    ema = upd["vq_ema"]
    np.testing.assert_allclose(ema["cluster_size"], [1.0, 0.75, 0.0])
    np.testing.assert_allclose(ema["embed_sum"], [[0.45, 0.55], [13.75, 1.25], [0.0, 2.5]], rtol=1e-6)
    n = 1.75
    smoothed = (np.array([1.0, 0.75, 0.0]) + EPS) / (n + 3 * EPS) * n
    np.testing.assert_allclose(
        ema["codebook"], np.array([[0.45, 0.55], [13.75, 1.25], [0, 2.5]]) / smoothed[:, None], rtol=1e-6
    )
    np.testing.assert_allclose(ema["codebook"][1], [18.3333, 1.66667], rtol=1e-4)


def test_no_update_unless_training_and_mutable():
    vq = VectorQuantizerEMA(num_codes=3, code_dim=2)
    v = _variables([[0, 0], [10, 0], [0, 10]])
    z = jnp.array([[1.0, 0.0], [9.0, 1.0]])
    _, upd = vq.apply(v, z, train=False, mutable=["vq_ema"])
    jax.tree.map(np.testing.assert_array_equal, upd, v)
    out = vq.apply(v, z, train=True)  # collection immutable: no update, no error
    np.testing.assert_array_equal(out["indices"], [0, 1])


def test_straight_through_gradient_is_identity():
    vq = VectorQuantizerEMA(num_codes=3, code_dim=2)
    v = _variables([[0, 0], [10, 0], [0, 10]])
    z = jnp.array([[1.0, 0.3], [9.0, 1.0], [0.2, 7.0], [3.0, 3.0]])
    w = jax.random.normal(jax.random.PRNGKey(0), z.shape)
    g = jax.grad(lambda z: jnp.sum(w * vq.apply(v, z, train=False)["z_q"]))(z)
    np.testing.assert_array_equal(g, w)


def test_commitment_loss_value_and_gradient():
    vq = VectorQuantizerEMA(num_codes=3, code_dim=2, commitment_cost=0.25)
    v = _variables([[0, 0], [10, 0], [0, 10]])
    z = jnp.array([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]])  # q = 0, 0, [10, 0]
    loss = lambda z: vq.apply(v, z, train=False)["commitment_loss"]
    # squared errors 1 + 1 + (1 + 1) over 6 elements, times 0.25
    np.testing.assert_allclose(loss(z), 0.25 * 4 / 6, rtol=1e-6)
    # d/dz of beta*mean((z - sg(q))^2) = 2*beta*(z - q)/6
    q = np.array([[0, 0], [0, 0], [10, 0]])
    np.testing.assert_allclose(jax.grad(loss)(z), 0.5 * (z - q) / 6, rtol=1e-6)


def test_perplexity_and_usage():
    vq = VectorQuantizerEMA(num_codes=8, code_dim=1)
    v = _variables(np.arange(8.0)[:, None])
    uniform = vq.apply(v, jnp.array([[0.0], [2.0], [5.0], [7.0]] * 3), train=False)
    np.testing.assert_allclose(uniform["perplexity"], 4.0, rtol=1e-5)
    np.testing.assert_allclose(uniform["usage"], 0.5)
    skewed = vq.apply(v, jnp.array([[0.0], [0.1], [3.0], [6.0]]), train=False)
    # p = (1/2, 1/4, 1/4): exp(entropy) = 2^1.5
    np.testing.assert_allclose(skewed["perplexity"], 2**1.5, rtol=1e-5)
    np.testing.assert_allclose(skewed["usage"], 3 / 8)


def test_wrong_code_dim_raises():
    vq = VectorQuantizerEMA(num_codes=3, code_dim=2)
    with pytest.raises(ValueError, match="code_dim=2"):
        vq.apply(_variables(np.zeros((3, 2))), jnp.zeros((4, 3)), train=False)


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
def test_sharded_batch_updates_with_global_statistics():
    n = jax.device_count()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    vq = VectorQuantizerEMA(num_codes=16, code_dim=4)
    z = jax.random.normal(jax.random.PRNGKey(1), (8 * n, 4))
    v = vq.init(jax.random.PRNGKey(0), z, train=True)
    step = jax.jit(lambda v, z: vq.apply(v, z, train=True, mutable=["vq_ema"]))
    out, upd = step(v, jax.device_put(z, sharding))
    assert len(out["indices"].sharding.device_set) == n
    ref_out, ref_upd = step(v, z)  # same step on one device
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), upd, ref_upd)
    np.testing.assert_allclose(out["perplexity"], ref_out["perplexity"], rtol=1e-5)


def test_dead_codes_restart_onto_batch_vectors():
    # Code 2 is far away and never used; code 3 has a tiny EMA count: both dead.
    codebook = [[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [0.0, 1.0]]
    counts = [100.0, 100.0, 0.0, 0.5]
    embed_sum = np.asarray(codebook) * np.asarray(counts)[:, None]
    embed_sum[2] = codebook[2]  # as initialised: embed_sum = codebook, count 0
    z = jnp.array([[0.1, 0.0], [0.9, 0.1], [0.0, 0.2], [1.1, -0.1]])
    for restart in (False, True):
        vq = VectorQuantizerEMA(num_codes=4, code_dim=2, restart_dead_codes=restart, dead_code_fraction=0.05)
        _, state = vq.apply(
            _variables(codebook, counts, embed_sum), z, train=True, mutable=["vq_ema"], rngs={"vq": jax.random.key(0)}
        )
        new = np.asarray(state["vq_ema"]["codebook"])
        sizes = np.asarray(state["vq_ema"]["cluster_size"])
        if not restart:  # the EMA recipe alone: code 2 stays out of reach
            assert np.linalg.norm(new[2]) > 1e3
            continue
        for code in (2, 3):  # moved exactly onto one of the batch's vectors
            assert np.min(np.abs(np.asarray(z) - new[code]).max(axis=1)) < 1e-5
            np.testing.assert_allclose(
                sizes[code], np.mean(0.99 * np.asarray(counts) + 0.01 * np.array([2.0, 2.0, 0.0, 0.0])), rtol=1e-6
            )
        # Live codes follow the plain EMA update.
        np.testing.assert_allclose(sizes[:2], 0.99 * 100 + 0.01 * 2, rtol=1e-6)
