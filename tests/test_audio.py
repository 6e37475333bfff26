"""avrep.audio against librosa 0.11 (the authors' front end) and identities."""

import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import scipy.signal

from avrep import audio

SR = 16000
N_FFT = 1024
HOPS = (533, 320, 256)  # MDVAE, VQ-MAE-AV, VQ-MAE-S / DVAE


def _signal(n: int = 21000, seed: int = 0) -> np.ndarray:
    """Chirp + harmonics + noise: energy in every band, not a toy sinusoid."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = np.sin(2 * np.pi * (150 * t + 2500 * t**2))
    x += 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    x += 0.05 * rng.standard_normal(n)
    return x.astype(np.float32)


def _librosa_stft(x, hop, window, center, pad_mode):
    win = np.asarray(audio.window(window, N_FFT), np.float64)
    spec = librosa.stft(x.astype(np.float64), n_fft=N_FFT, hop_length=hop, window=win, center=center, pad_mode=pad_mode)
    return np.swapaxes(spec, -1, -2)


def test_window_values():
    hann = scipy.signal.get_window("hann", N_FFT, fftbins=True)
    np.testing.assert_allclose(audio.window("hann", N_FFT), hann, atol=1e-7)
    n = np.arange(N_FFT)
    np.testing.assert_allclose(audio.window("sine", N_FFT), np.sin((n + 0.5) / N_FFT * np.pi), atol=1e-7)
    # Princen-Bradley: w[n]^2 + w[n + N/2]^2 = 1, the property the DVAE code uses.
    sine = np.asarray(audio.window("sine", N_FFT), np.float64)
    np.testing.assert_allclose(sine[:512] ** 2 + sine[512:] ** 2, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="window"):
        audio.window("hamming", N_FFT)


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("window", ["hann", "sine"])
@pytest.mark.parametrize("center,pad_mode", [(True, "constant"), (True, "reflect"), (False, "constant")])
def test_stft_matches_librosa(hop, window, center, pad_mode):
    x = _signal()
    ref = _librosa_stft(x, hop, window, center, pad_mode)
    got = np.asarray(audio.stft(x, N_FFT, hop, window, center, pad_mode))
    assert got.dtype == np.complex64
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * scale)
    power = np.asarray(audio.power_spectrogram(x, N_FFT, hop, window, center, pad_mode))
    assert power.dtype == np.float32
    np.testing.assert_allclose(power, np.abs(ref) ** 2, rtol=0, atol=1e-4 * scale**2)


def test_stft_batched_and_jitted():
    x = np.stack([_signal(seed=s) for s in range(3)]).reshape(3, 1, -1)
    f = jax.jit(functools.partial(audio.power_spectrogram, n_fft=N_FFT, hop=320))
    got = np.asarray(f(x))
    ref = np.abs(_librosa_stft(x, 320, "hann", True, "constant")) ** 2
    assert got.shape == (3, 1, 1 + x.shape[-1] // 320, 513)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * ref.max())
    # Each batch element is independent: no mixing along leading dims.
    np.testing.assert_allclose(
        got[1, 0], np.asarray(audio.power_spectrogram(x[1, 0], N_FFT, 320)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_host_pad_crop_equals_centered_stft(hop, pad_mode):
    """Data-pipeline identity: host pad + crop, then center=False on device."""
    x = _signal()
    full = np.asarray(audio.stft(x, N_FFT, hop, "hann", True, pad_mode))
    padded = audio.pad_for_center(x, N_FFT, pad_mode)
    assert padded.shape == (x.size + N_FFT,)
    n_frames = 30
    for t0 in (0, 3, full.shape[0] - n_frames):
        crop = padded[t0 * hop : t0 * hop + (n_frames - 1) * hop + N_FFT]
        win = np.asarray(audio.stft(crop, N_FFT, hop, "hann", center=False))
        assert win.shape == (n_frames, 513)
        np.testing.assert_allclose(win, full[t0 : t0 + n_frames], rtol=0, atol=1e-5)


def test_frame_layout():
    x = jnp.arange(20.0)
    frames = audio.frame(x, 6, 4)
    assert frames.shape == (4, 6)  # 1 + (20 - 6) // 4
    np.testing.assert_array_equal(frames[2], np.arange(8.0, 14.0))
    with pytest.raises(ValueError, match="shorter than one frame"):
        audio.frame(x[:5], 6, 4)


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize("window", ["hann", "sine"])
def test_istft_reconstructs_and_matches_librosa(hop, window):
    x = _signal()
    spec = audio.stft(x, N_FFT, hop, window)
    y = np.asarray(audio.istft(spec, hop, window, length=x.size))
    assert y.shape == x.shape
    assert np.abs(y - x).max() < 1e-4  # whole signal, edges included
    ref = librosa.istft(
        np.swapaxes(np.asarray(spec), -1, -2),
        hop_length=hop,
        window=np.asarray(audio.window(window, N_FFT)),
        length=x.size,
    )
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
    # Without length: (n_frames - 1) * hop samples, as librosa.
    y_nolen = np.asarray(audio.istft(spec, hop, window))
    assert y_nolen.shape == ((spec.shape[0] - 1) * hop,)
    np.testing.assert_allclose(y_nolen, x[: y_nolen.size], rtol=0, atol=1e-4)


def test_istft_uncentered_interior():
    x = _signal()
    hop = 256
    spec = audio.stft(x, N_FFT, hop, center=False)
    y = np.asarray(audio.istft(spec, hop, center=False))
    assert y.shape == ((spec.shape[0] - 1) * hop + N_FFT,)
    # The first sample has zero window weight; away from the edges it is exact.
    np.testing.assert_allclose(y[N_FFT:-N_FFT], x[N_FFT : y.size - N_FFT], rtol=0, atol=1e-4)


def test_spectrogram_to_waveform_with_true_phase():
    x = np.stack([_signal(seed=0), _signal(seed=1)])
    spec = audio.stft(x, N_FFT, 533)
    y = audio.spectrogram_to_waveform(jnp.abs(spec) ** 2, jnp.angle(spec), 533, "hann", x.shape[-1])
    assert np.abs(np.asarray(y) - x).max() < 1e-4


def _spectral_convergence(y, magnitude, hop, n_frames):
    rebuilt = np.abs(np.asarray(audio.stft(y, N_FFT, hop)))[:n_frames]
    return np.linalg.norm(rebuilt - magnitude) / np.linalg.norm(magnitude)


@pytest.mark.parametrize("hop", [533, 256])
def test_griffin_lim(hop):
    x = _signal(16000)
    power = audio.power_spectrogram(x, N_FFT, hop)
    mag = np.sqrt(np.asarray(power))

    def gl(n_iter, **kw):
        return np.asarray(audio.griffin_lim(power, n_iter=n_iter, hop=hop, length=x.size, **kw))

    y2 = gl(2, key=jax.random.key(0))
    y32 = gl(32, key=jax.random.key(0))
    assert y32.shape == x.shape and np.all(np.isfinite(y32))
    sc2 = _spectral_convergence(y2, mag, hop, len(mag))
    sc32 = _spectral_convergence(y32, mag, hop, len(mag))
    assert sc32 < 0.5 * sc2

    # Zero-phase start is deterministic: same iterates as librosa.griffinlim.
    ours = gl(32, init="zeros")
    ref = librosa.griffinlim(mag.T, n_iter=32, hop_length=hop, init=None, length=x.size)
    assert np.abs(ours - ref).max() < 1e-2 * np.abs(ref).max()
    sc_ours = _spectral_convergence(ours, mag, hop, len(mag))
    sc_ref = _spectral_convergence(ref.astype(np.float32), mag, hop, len(mag))
    assert abs(sc_ours - sc_ref) < 1e-3
    # Random start: same quality range as librosa's random start.
    ref_random = librosa.griffinlim(mag.T, n_iter=32, hop_length=hop, random_state=0, length=x.size)
    sc_ref_random = _spectral_convergence(ref_random.astype(np.float32), mag, hop, len(mag))
    assert sc32 < 2 * sc_ref_random

    # power=1 takes a magnitude; the result is the same.
    np.testing.assert_allclose(
        np.asarray(audio.griffin_lim(mag, n_iter=32, hop=hop, length=x.size, init="zeros", power=1.0)),
        ours,
        rtol=0,
        atol=1e-4,
    )


def test_griffin_lim_errors():
    power = audio.power_spectrogram(_signal(8000), N_FFT, 256)
    with pytest.raises(ValueError, match="PRNG key"):
        audio.griffin_lim(power, hop=256)
    with pytest.raises(ValueError, match="set length"):
        audio.griffin_lim(power, hop=256, init="zeros", length=4000)


def test_bad_pad_mode():
    with pytest.raises(ValueError, match="pad_mode"):
        audio.stft(_signal(4000), pad_mode="edge")
    with pytest.raises(ValueError, match="pad_mode"):
        audio.pad_for_center(_signal(4000), N_FFT, "wrap")
