"""DVAE noise models trained on noisy speech (U-ND) and adapted per utterance (U-NDA):
avrep.models.enhancement.noise_models.train_und / und / una(start=...)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avrep.models import dvae
from avrep.models import enhancement as se
from avrep.models.enhancement import noise_models

KEY = jax.random.key(0)
NOISE = se.NoiseModelSettings(kind="NO", hidden=8, dense_hidden=8)


def _tiny_vae():
    model = dvae.build_model(dict(model="VAE", x_dim=513, z_dim=4, dense_x_z=(16,)))
    return model, model.init({"params": KEY}, jnp.ones((1, 3, 513)), sample=False)


def _coloured(rng, n):
    """White noise through a one-pole low-pass: a fixed spectral tilt the noise network can learn."""
    white = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(white)
    acc = 0.0
    for i, w in enumerate(white):
        acc = 0.9 * acc + w
        out[i] = acc
    return out


def test_und_training_lowers_its_objective_and_und_is_one_compiled_pass():
    model, variables = _tiny_vae()
    rng = np.random.default_rng(0)
    pool = se.batch_stft([_coloured(rng, 6000) for _ in range(4)])
    power = np.abs(np.asarray(pool.X)) ** 2  # [4, 24, 513], every frame real
    settings = se.UNDSettings(noise=NOISE, num_steps=40, batch_size=4, frames=12, learning_rate=2e-2)

    def windows(step):
        starts = np.random.default_rng(step).integers(0, power.shape[1] - settings.frames, size=settings.batch_size)
        rows = np.arange(settings.batch_size) % power.shape[0]
        batch = np.stack([power[r, s : s + settings.frames] for r, s in zip(rows, starts)])
        return batch, np.ones(batch.shape[:2], bool)

    trained, losses = se.train_und(model, variables, windows, settings=settings, key=KEY)
    assert losses.shape == (40,)
    # The untrained noise network starts at v_n ~ 1 for powers of ~10-1000: the objective must fall by far.
    assert losses[-5:].mean() < losses[:5].mean() - 1.0, (losses[:5], losses[-5:])
    assert set(trained) == {"encoder", "noise"}

    # The test-time pass: a batch of two lengths in one compiled call; the NO network reads only the past and
    # the VAE is frame-wise, so each utterance's real frames equal it enhanced alone.
    batch = se.batch_stft([_coloured(rng, n) for n in (4000, 2500)])
    before = noise_models._und_batched._cache_size()
    both = se.und(model, variables, trained, batch.X, batch.mask, settings=NOISE)
    assert noise_models._und_batched._cache_size() == before + 1
    se.und(model, variables, trained, batch.X * 2, batch.mask, settings=NOISE)  # same shapes: no new program
    assert noise_models._und_batched._cache_size() == before + 1
    frames = int(batch.mask[1].sum())
    alone = se.und(model, variables, trained, batch.X[1:, :frames], batch.mask[1:, :frames], settings=NOISE)
    np.testing.assert_allclose(both["S_hat"][1, :frames], alone["S_hat"][0], rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(both["S_hat"][1, frames:]) == 0)
    gain = np.abs(np.asarray(both["S_hat"])) / np.maximum(np.abs(np.asarray(batch.X)), 1e-12)
    assert gain.max() <= 1 + 1e-5

    # U-NDA starts where U-ND ends: its first objective is the trained networks' (far below a fresh network's).
    adapt = se.NoiseModelSettings(kind="NO", hidden=8, dense_hidden=8, num_iterations=3, sample=False)
    nda = se.una(model, variables, batch.X, batch.mask, settings=adapt, key=KEY, start=trained)
    na = se.una(model, variables, batch.X, batch.mask, settings=adapt, key=KEY)
    assert np.all(np.asarray(nda["loss"])[:, 0] < np.asarray(na["loss"])[:, 0] - 1.0)


def test_und_checks():
    model, variables = _tiny_vae()
    with pytest.raises(ValueError, match="final_learning_rate"):
        se.UNDSettings(learning_rate=1e-8, final_learning_rate=1e-8)
    with pytest.raises(ValueError, match="num_steps"):
        se.UNDSettings(num_steps=0)
    trained = dict(encoder={}, noise={})
    with pytest.raises(ValueError, match="mask has shape"):
        se.und(model, variables, trained, jnp.ones((1, 6, 513), jnp.complex64), jnp.ones((1, 5), bool))

    def bad_windows(step):
        return np.ones((2, 5, 7)), np.ones((2, 5), bool)

    with pytest.raises(ValueError, match="expected \\[B, T, 513\\]"):
        se.train_und(model, variables, bad_windows, settings=se.UNDSettings(noise=NOISE, num_steps=1), key=KEY)


def test_power_spectrograms_in_padded_chunks_equal_one_at_a_time():
    """The U-ND / AV-CVAE training loaders compute the front end a chunk of utterances at a time."""
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (3000, 5000, 4100)]
    for wave, power in zip(waves, se.frontend.power_spectrograms(waves, chunk=2)):
        X = np.asarray(se.frontend.stft(wave / np.abs(wave).max()))
        assert power.shape == X.shape
        np.testing.assert_allclose(power, np.abs(X) ** 2, rtol=1e-5, atol=1e-6 * float(power.max()))
