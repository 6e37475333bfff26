"""avrep.evaluation.metrics vs exact values, skimage, sewar, pystoi and pesq."""

import numpy as np
import pytest
from scipy import ndimage, signal
from skimage.metrics import structural_similarity

from avrep.evaluation import metrics

SR = 16000


# ----------------------------------------------------------------------------
# Audio


def _speechlike(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Harmonic source, moving pitch, syllable-rate envelope with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = np.sqrt(np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None))
    return 0.3 * voiced * envelope + 1e-3 * rng.standard_normal(t.size)


def _noise_at_snr(x, snr_db, seed):
    noise = np.random.default_rng(seed).standard_normal(x.size)
    return noise * np.linalg.norm(x) / np.linalg.norm(noise) * 10 ** (-snr_db / 20)


@pytest.mark.parametrize("snr_db", [-3.0, 0.0, 12.5, 30.0])
def test_si_sdr_exact_value(snr_db):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(8000) + 0.7  # non-zero mean: must be removed
    ref0 = ref - ref.mean()
    noise = rng.standard_normal(8000)
    noise -= noise.mean()
    noise -= np.dot(noise, ref0) / np.dot(ref0, ref0) * ref0  # orthogonal to ref
    noise *= np.linalg.norm(ref0) / np.linalg.norm(noise) * 10 ** (-snr_db / 20)
    est = ref + noise + 5.0  # offset is removed too
    assert metrics.si_sdr(ref, est) == pytest.approx(snr_db, abs=1e-9)
    # Scale invariance: rescaling the estimate does not change the value.
    assert metrics.si_sdr(ref, -3.7 * est) == pytest.approx(snr_db, abs=1e-9)
    # A plain SNR would penalise this scaling; SI-SDR must not.
    assert metrics.si_sdr(ref, 0.5 * ref) == np.inf


def test_si_sdr_errors():
    with pytest.raises(ValueError, match="equal length"):
        metrics.si_sdr(np.ones(10), np.ones(11))
    with pytest.raises(ValueError, match="constant"):
        metrics.si_sdr(np.ones(10), np.arange(10.0))


def test_stoi_pesq_clean_and_monotone_in_snr():
    x = _speechlike()
    clean = metrics.audio_metrics(x, x, SR)
    assert clean["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert clean["pesq"] == pytest.approx(4.644, abs=0.01)  # wide-band maximum
    assert clean["si_sdr"] == np.inf
    scores = [metrics.audio_metrics(x, x + _noise_at_snr(x, snr, seed=snr), SR) for snr in (30, 15, 5, 0)]
    for key in ("stoi", "pesq", "si_sdr"):
        values = [s[key] for s in scores]
        assert all(a > b for a, b in zip(values, values[1:])), (key, values)
    assert scores[0]["si_sdr"] == pytest.approx(30, abs=0.1)
    # ESTOI is a different number from STOI on the same pair.
    noisy = x + _noise_at_snr(x, 5, seed=5)
    assert metrics.stoi(x, noisy, SR, extended=True) != pytest.approx(scores[2]["stoi"], abs=1e-3)


def test_audio_metric_errors_are_loud():
    x = _speechlike()
    with pytest.raises(ValueError, match="16 kHz"):
        metrics.pesq_wb(x, x, sample_rate=8000)
    with pytest.raises(ValueError, match="all zeros"):
        metrics.pesq_wb(np.zeros(SR), np.zeros(SR))
    with pytest.raises(ValueError, match="BufferTooShortError"):
        metrics.pesq_wb(x[:1000], x[:1000])
    with pytest.raises(ValueError, match="fewer than 30 frames"):
        metrics.stoi(x[:2000], x[:2000], SR)


# ----------------------------------------------------------------------------
# Images


def _images(n: int = 6, size: int = 64, seed: int = 0):
    """Smooth textured images in [0, 1] and noisy, clipped reconstructions."""
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.random((n, size, size, 3)), (0, 2, 2, 0))
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    est = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1)
    return ref, est


def _skimage_ssim(ref, est):
    return structural_similarity(
        ref, est, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )


def _sewar_scc(ref, est):
    """sewar 0.4.6 ``full_ref.scc`` transcribed (sewar is not installed)."""
    kernel = [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]

    def laplace(inp, axis, output, mode, cval):
        return ndimage.correlate(inp, kernel, output, mode, cval, 0)

    def filter2(img):
        return signal.convolve2d(img, np.rot90(np.ones((8, 8)) / 64, 2), mode="same")

    maps = []
    for c in range(ref.shape[2]):
        g = ndimage.generic_laplace(ref[:, :, c].astype(np.float64), laplace)
        p = ndimage.generic_laplace(est[:, :, c].astype(np.float64), laplace)
        mg, mp = filter2(g), filter2(p)
        sg = filter2(g * g) - mg * mg
        sp = filter2(p * p) - mp * mp
        sgp = filter2(g * p) - mg * mp
        sg[sg < 0] = 0
        sp[sp < 0] = 0
        den = np.sqrt(sg) * np.sqrt(sp)
        zero = den == 0
        den[zero] = 1
        m = sgp / den
        m[zero] = 0
        maps.append(m)
    return np.mean(np.stack(maps, -1))


def test_ssim_matches_skimage():
    ref, est = _images()
    est[2] = 0.8 * ref[2] + 0.1  # contrast/luminance change, not just noise
    for r, e in zip(ref, est):
        assert metrics.ssim(r, e) == pytest.approx(_skimage_ssim(r, e), abs=1e-9)
    gray = metrics.ssim(ref[0, ..., 0], est[0, ..., 0])
    assert gray == pytest.approx(
        structural_similarity(
            ref[0, ..., 0],
            est[0, ..., 0],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        ),
        abs=1e-9,
    )
    assert metrics.ssim(ref[0], ref[0]) == pytest.approx(1.0, abs=1e-12)
    # data_range enters C1/C2: images on a 0-255 scale give the same SSIM.
    assert metrics.ssim(255 * ref[0], 255 * est[0], data_range=255.0) == (
        pytest.approx(metrics.ssim(ref[0], est[0]), abs=1e-9)
    )


def test_differentiable_ssim_equals_the_metric():
    """avrep.nn.losses.ssim (the tokenizer's training term) computes the evaluation's SSIM,
    and its gradient raises it."""
    import jax
    import jax.numpy as jnp

    from avrep.nn.losses import ssim

    ref, est = _images()
    est[2] = 0.8 * ref[2] + 0.1
    got = ssim(jnp.asarray(ref, jnp.float32), jnp.asarray(est, jnp.float32))
    np.testing.assert_allclose(got, metrics.image_metrics(ref, est)["ssim"], atol=2e-5)
    x, y = jnp.asarray(ref, jnp.float32), jnp.asarray(est, jnp.float32)
    grad = jax.grad(lambda y: jnp.sum(ssim(x, y)))(y)
    assert np.isfinite(np.asarray(grad)).all()
    assert np.all(np.asarray(ssim(x, y + 0.5 * grad / jnp.max(jnp.abs(grad)) * 0.01)) > np.asarray(got))


def test_scc_matches_sewar():
    ref, est = _images()
    ref[1, :20, :20] = 0.0  # flat black region: exact-zero windows count as 0
    est[1, :20, :20] = 0.0
    for r, e in zip(ref, est):
        assert metrics.scc(r, e) == pytest.approx(_sewar_scc(r, e), abs=1e-9)
    assert metrics.scc(ref[0], ref[0]) == pytest.approx(1.0, abs=1e-12)
    assert metrics.scc(ref[0], 1 - ref[0]) == pytest.approx(-1.0, abs=1e-12)
    # Windows where the high-passed reference is flat score 0, not NaN.
    flat = np.full((32, 32, 3), 0.4)
    assert metrics.scc(flat, est[0, :32, :32]) == 0.0


def test_mse_psnr_by_hand():
    ref = np.full((16, 16, 3), 0.5)
    est = ref + 0.1  # uniform error: MSE 0.01, PSNR 20 dB at range 1
    assert metrics.mse(ref, est) == pytest.approx(0.01, rel=1e-12)
    assert metrics.psnr(ref, est) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr(255 * ref, 255 * est, data_range=255.0) == (pytest.approx(20.0, abs=1e-9))
    assert metrics.psnr(ref, ref) == np.inf


def test_image_metrics_batch_equals_per_image():
    ref, est = _images(n=37)  # not a multiple of the block size
    out = metrics.image_metrics(ref.astype(np.float32), est.astype(np.float32))
    assert set(out) == {"mse", "psnr", "ssim", "scc"}
    ref32 = ref.astype(np.float32).astype(np.float64)
    est32 = est.astype(np.float32).astype(np.float64)
    for i in range(len(ref)):
        assert out["mse"][i] == pytest.approx(metrics.mse(ref32[i], est32[i]), rel=1e-12)
        assert out["psnr"][i] == pytest.approx(metrics.psnr(ref32[i], est32[i]), abs=1e-9)
        assert out["ssim"][i] == pytest.approx(_skimage_ssim(ref32[i], est32[i]), abs=1e-6)
        assert out["scc"][i] == pytest.approx(_sewar_scc(ref32[i], est32[i]), abs=1e-6)


def test_image_metrics_shape_errors():
    ref, est = _images(n=2)
    with pytest.raises(ValueError, match="equal shape"):
        metrics.image_metrics(ref, est[:1])
    with pytest.raises(ValueError, match="SSIM window"):
        metrics.image_metrics(ref[:, :8, :8], est[:, :8, :8])


def test_summarize_counts_non_finite():
    mean, std, n_bad = metrics.summarize([1.0, 3.0, np.nan, np.inf])
    assert (mean, std, n_bad) == (2.0, 1.0, 2)
    assert np.isnan(metrics.summarize([np.nan])[0])
    assert metrics.summarize([np.nan])[2] == 1
