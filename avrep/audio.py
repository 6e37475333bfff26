"""Jittable audio front end: STFT, power spectrogram, inverse STFT, Griffin-Lim.

Everything here is pure ``jax.numpy`` so the featurisation can run on the
accelerator inside a jitted step (docs/DESIGN.md). Layout is **time-major**:
spectrograms are ``[..., frames, bins]`` (librosa's ``[..., bins, frames]``
transposed); any leading batch dims are allowed. ``n_fft``, ``hop``, ``window``
and other configuration arguments are static under ``jax.jit``.

The conventions are librosa 0.11's, so numbers match the authors' code
(keys: docs/REFERENCES.md; [MDVAE] Sec. 3.1 and [code-mdvae]: Hann, n_fft 1024,
hop 533; [Sadok-thesis] Sec. 5.3.1 and [code-vqmae-av]: hop 320 for VQ-MAE-AV;
[Sadok-thesis] App. C.3: hop 256 for VQ-MAE-S; [Lin-thesis] Sec. 5.3.2 and
[code-dvae]: sine window, hop 256, reflect padding):

* the window has length ``n_fft`` (``win_length = n_fft``);
* ``center=True`` pads ``n_fft // 2`` samples on both sides with ``pad_mode``
  (``"constant"`` = zeros, librosa 0.11's default, or ``"reflect"``), so frame
  ``t`` is centred on sample ``t * hop``;
* ``istft`` is a weighted overlap-add divided by the window sum-square, as
  ``librosa.istft``; ``griffin_lim`` is ``librosa.griffinlim``'s fast
  Griffin-Lim (Perraudin et al. 2013).

Host padding + device framing. The data pipeline pads each utterance once on
the host with :func:`pad_for_center`, crops a window of
``(T - 1) * hop + n_fft`` samples starting at sample ``t0 * hop`` and frames it
on device with ``center=False``. That gives exactly frames ``t0 .. t0 + T - 1``
of the centred STFT of the whole utterance::

  padded = pad_for_center(wav, n_fft, pad_mode)
  start = t0 * hop
  stft(wav, center=True)[..., t0:t0 + T, :] == stft(
      padded[..., start:start + (T - 1) * hop + n_fft], center=False)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_WINDOWS = ("hann", "sine")
_PAD_MODES = ("constant", "reflect")
_TINY = np.finfo(np.float32).tiny  # librosa's util.tiny for float32 / complex64


def _window_np(name: str, n_fft: int) -> np.ndarray:
    n = np.arange(n_fft)
    if name == "hann":  # periodic Hann = scipy.signal.get_window("hann", n_fft)
        return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    if name == "sine":  # MDCT sine window of the DVAE code: sin(pi (n + 1/2) / N)
        return np.sin(np.pi * (n + 0.5) / n_fft)
    raise ValueError(f"window={name!r}: expected one of {_WINDOWS}")


def window(name: str, n_fft: int) -> jax.Array:
    """Analysis/synthesis window of length ``n_fft`` as float32.

    ``"hann"`` is the periodic Hann window (librosa's default). ``"sine"`` is
    ``sin(pi (n + 0.5) / n_fft)``, the window of the DVAE benchmark code; its
    square is a half-sample-shifted periodic Hann window.
    """
    return jnp.asarray(_window_np(name, n_fft), jnp.float32)


def _check_pad_mode(pad_mode: str) -> None:
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"pad_mode={pad_mode!r}: expected one of {_PAD_MODES}")


def _center_pad(xp, wav, n_fft: int, pad_mode: str):
    _check_pad_mode(pad_mode)
    half = n_fft // 2
    if pad_mode == "reflect" and wav.shape[-1] <= half:
        raise ValueError(
            f"reflect padding by {half} samples needs a signal longer than {half} samples, got {wav.shape[-1]}"
        )
    return xp.pad(wav, [(0, 0)] * (wav.ndim - 1) + [(half, half)], mode=pad_mode)


def pad_for_center(wav: np.ndarray, n_fft: int, pad_mode: str = "constant") -> np.ndarray:
    """Host-side (numpy) centre padding, identical to ``stft(center=True)``'s."""
    return _center_pad(np, np.asarray(wav), n_fft, pad_mode)


def frame(wav: jax.Array, frame_length: int, hop: int) -> jax.Array:
    """Frames ``[..., n_frames, frame_length]``, no padding.

    ``n_frames = 1 + (len - frame_length) // hop``. One gather with a static
    index table: on CPU it was 1-7x faster than assembling frames from shifted
    slices of the reshaped signal.
    """
    n = wav.shape[-1]
    if n < frame_length:
        raise ValueError(f"signal of {n} samples is shorter than one frame ({frame_length})")
    n_frames = 1 + (n - frame_length) // hop
    index = hop * np.arange(n_frames)[:, None] + np.arange(frame_length)[None, :]
    return wav[..., index]


def _overlap_add(xp, frames, hop: int):
    """Sum of ``frames[..., f, :]`` placed at sample ``f * hop`` (numpy or jnp).

    Each frame is cut into ``k = ceil(length / hop)`` chunks of ``hop`` samples
    and chunk ``j`` is shifted by ``j`` chunks: ``k`` pads and adds instead of a
    scatter-add, which took 0.7-7x as long on CPU.
    """
    n_frames, length = frames.shape[-2:]
    k = -(-length // hop)
    lead = [(0, 0)] * (frames.ndim - 2)
    frames = xp.pad(frames, lead + [(0, 0), (0, k * hop - length)])
    chunks = frames.reshape(*frames.shape[:-1], k, hop)
    out = sum(xp.pad(chunks[..., j, :], lead + [(j, k - 1 - j), (0, 0)]) for j in range(k))
    out = out.reshape(*out.shape[:-2], (n_frames + k - 1) * hop)
    return out[..., : (n_frames - 1) * hop + length]


@functools.partial(jax.jit, static_argnames=("n_fft", "hop", "window", "center", "pad_mode"))
def stft(
    wav: jax.Array,
    n_fft: int = 1024,
    hop: int = 533,
    window: str = "hann",
    center: bool = True,
    pad_mode: str = "constant",
) -> jax.Array:
    """Complex64 STFT ``[..., n_frames, n_fft // 2 + 1]`` = ``librosa.stft().T``.

    ``n_frames = 1 + len // hop`` with ``center=True`` (even ``n_fft``), else
    ``1 + (len - n_fft) // hop``. Reflect padding reflects the whole signal, as
    numpy and :func:`pad_for_center` do; librosa 0.11 pads the tail on its own
    and, when that tail is exactly ``n_fft // 2`` samples (e.g. 3198 samples at
    hop 533), reflects twice and differs in one sample of the last frame.
    """
    wav = jnp.asarray(wav, jnp.float32)
    if center:
        wav = _center_pad(jnp, wav, n_fft, pad_mode)
    frames = frame(wav, n_fft, hop) * _window_np(window, n_fft).astype(np.float32)
    return jnp.fft.rfft(frames, axis=-1)


@functools.partial(jax.jit, static_argnames=("n_fft", "hop", "window", "center", "pad_mode"))
def power_spectrogram(
    wav: jax.Array,
    n_fft: int = 1024,
    hop: int = 533,
    window: str = "hann",
    center: bool = True,
    pad_mode: str = "constant",
) -> jax.Array:
    """Linear power ``|STFT|^2``, float32: the models' input (no log)."""
    spec = stft(wav, n_fft, hop, window, center, pad_mode)
    return jnp.square(spec.real) + jnp.square(spec.imag)


@functools.partial(jax.jit, static_argnames=("hop", "window", "center", "length"))
def istft(
    spec: jax.Array, hop: int = 533, window: str = "hann", center: bool = True, length: int | None = None
) -> jax.Array:
    """Inverse of :func:`stft` (``n_fft = 2 * (bins - 1)``), as ``librosa.istft``.

    Weighted overlap-add of the windowed inverse FFTs, divided by the overlap-add
    of the squared window wherever that exceeds float32's tiny. ``center=True``
    drops the ``n_fft // 2`` padded samples at the start. ``length`` crops or
    zero-pads the output; otherwise it has ``(n_frames - 1) * hop`` samples
    (``center=True``) or ``(n_frames - 1) * hop + n_fft``.
    """
    n_fft = 2 * (spec.shape[-1] - 1)
    n_frames = spec.shape[-2]
    if length is not None:  # frames starting past the output contribute nothing
        padded = length + 2 * (n_fft // 2) if center else length
        n_frames = min(n_frames, math.ceil(padded / hop))
        spec = spec[..., :n_frames, :]
    win = _window_np(window, n_fft)
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * win.astype(np.float32)
    wav = _overlap_add(jnp, frames, hop)
    wss = _overlap_add(np, np.broadcast_to(win**2, (n_frames, n_fft)), hop)

    start = n_fft // 2 if center else 0
    if length is None:
        length = wss.shape[-1] - 2 * start
    wav, wss = wav[..., start : start + length], wss[start : start + length]
    if wss.shape[-1] < length:
        extra = length - wss.shape[-1]
        wav = jnp.pad(wav, [(0, 0)] * (wav.ndim - 1) + [(0, extra)])
        wss = np.pad(wss, (0, extra))
    wss = wss.astype(np.float32)
    return wav / np.where(wss > _TINY, wss, np.float32(1.0))


@functools.partial(jax.jit, static_argnames=("hop", "window", "center", "length"))
def spectrogram_to_waveform(
    power: jax.Array,
    phase: jax.Array,
    hop: int = 533,
    window: str = "hann",
    length: int | None = None,
    center: bool = True,
) -> jax.Array:
    """Waveform from a power spectrogram and a phase.

    With the input's own phase this gives the oracle-phase resynthesis used for
    intrusive metrics ([MDVAE] Sec. 3.3).
    """
    mag = jnp.sqrt(jnp.maximum(power, 0.0))
    return istft(mag * jnp.exp(1j * phase).astype(jnp.complex64), hop, window, center, length)


_GL_INITS = ("random", "zeros")


@functools.partial(jax.jit, static_argnames=("n_iter", "hop", "window", "length", "init", "center", "pad_mode"))
def griffin_lim(
    power_or_magnitude: jax.Array,
    n_iter: int = 32,
    hop: int = 533,
    window: str = "hann",
    momentum: float = 0.99,
    length: int | None = None,
    init: str = "random",
    key: jax.Array | None = None,
    power: float = 2.0,
    center: bool = True,
    pad_mode: str = "constant",
) -> jax.Array:
    """Fast Griffin-Lim phase reconstruction, as ``librosa.griffinlim``.

    The input is ``|X|^power`` (``power=2``: a power spectrogram, ``power=1``: a
    magnitude), ``[..., frames, bins]``. ``init="random"`` draws uniform phases
    from ``key``; ``init="zeros"`` starts from zero phase (librosa's
    ``init=None``). Each iteration: ``istft`` -> ``stft`` -> momentum step
    ``c_t - momentum / (1 + momentum) * c_{t-1}`` -> keep the phase, impose the
    target magnitude.
    """
    mag = jnp.maximum(jnp.asarray(power_or_magnitude, jnp.float32), 0.0)
    mag = mag ** (1.0 / power)
    n_frames, n_bins = mag.shape[-2:]
    n_fft = 2 * (n_bins - 1)
    if init == "random":
        if key is None:
            raise ValueError('init="random" needs a PRNG key')
        phase = 2 * jnp.pi * jax.random.uniform(key, mag.shape)
        angles = mag * jnp.exp(1j * phase).astype(jnp.complex64)
    elif init == "zeros":
        angles = mag.astype(jnp.complex64)
    else:
        raise ValueError(f"init={init!r}: expected one of {_GL_INITS}")

    to_wav = functools.partial(istft, hop=hop, window=window, center=center, length=length)

    def step(_, carry):
        angles, prev = carry
        rebuilt = stft(to_wav(angles), n_fft, hop, window, center, pad_mode)
        if rebuilt.shape != angles.shape:
            raise ValueError(
                f"re-analysis gives {rebuilt.shape[-2]} frames, the input has {n_frames}: set length to match"
            )
        angles = rebuilt - (momentum / (1 + momentum)) * prev
        angles = angles / (jnp.abs(angles) + _TINY) * mag
        return angles, rebuilt

    angles, _ = jax.lax.fori_loop(0, n_iter, step, (angles, jnp.zeros_like(angles)))
    return to_wav(angles)
