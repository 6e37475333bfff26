"""Labelled source-filter sweeps and sustained vowels from SynthAV's synthesiser (``speech.synthesize``).

The source-filter VAE ([SF-VAE] = [Sadok-thesis] Ch. 3, App. A.1; keys: docs/REFERENCES.md) learns each factor's
latent subspace from a few seconds of synthetic vowels in which only that factor moves. The thesis made them
with Soundgen; here SynthAV's Klatt-style cascade makes them from explicit tracks, one STFT frame per point:

| factor | points | range (Hz, evenly spaced) | fixed |
|---|---|---|---|
| f0 | 226 | 85-310 | f1 600, f2 2000, f3 3000 |
| f1 | 401 | 200-1000 | f0 140, f2 1600, f3 3200 |
| f2 | 401 | 800-2800 | f0 140, f1 500, f3 3200 |
| f3 | 241 | 2000-3200 | f0 140, f1 500, f2 1200 |

Frame k of a sweep is centred on sample k * hop (centred STFT, hop 256 = 16 ms; 226 points = 3.6 s as in the
thesis), where the swept factor equals its label. Bandwidths of F1-F3 follow the TMF-1963 formula
15 (500/F)^2 + 20 (F/500)^0.5 + 5 (F/500)^2 Hz (Soundgen's ``getBandwidth`` above 500 Hz; its low-frequency
correction is not reproduced); F4-F7 and their bandwidths are SynthAV's. The voice is steady (constant
voicing, no jitter or shimmer, a little aspiration), and each waveform is peak-normalised to 1, the scale the
IS-VAE sees. Soundgen's fixed 30 dB formant amplitude has no counterpart in a cascade synthesiser.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.synthav import speech

FACTORS = ("f0", "f1", "f2", "f3")
# factor: (points, low Hz, high Hz, the fixed values of the others)
SWEEPS = {
    "f0": (226, 85.0, 310.0, dict(f1=600.0, f2=2000.0, f3=3000.0)),
    "f1": (401, 200.0, 1000.0, dict(f0=140.0, f2=1600.0, f3=3200.0)),
    "f2": (401, 800.0, 2800.0, dict(f0=140.0, f1=500.0, f3=3200.0)),
    "f3": (241, 2000.0, 3200.0, dict(f0=140.0, f1=500.0, f2=1200.0)),
}
# A steady modal voice (SynthAV's speaker ranges, middle values).
VOICE = dict(open_quotient=0.6, tilt=0.08, breathiness=0.15, jitter=0.0, shimmer=0.0)


def tmf_bandwidth(freq):
    """Formant bandwidth (Hz) by the TMF-1963 formula."""
    f = np.asarray(freq, np.float64) / 500.0
    return 15.0 / f**2 + 20.0 * np.sqrt(f) + 5.0 * f**2


def synthesize_tracks(f0, f1, f2, f3, *, hop: int, seed: int = 0, voice: dict | None = None) -> np.ndarray:
    """Peak-normalised 16 kHz waveform whose f0 and F1-F3 follow the given per-frame tracks [N] (Hz; frame k
    at sample k * hop, linear in between): (N - 1) * hop + 1 samples."""
    tracks_in = [np.atleast_1d(np.asarray(t, np.float64)) for t in (f0, f1, f2, f3)]
    n = max(len(t) for t in tracks_in)
    if any(len(t) not in (1, n) for t in tracks_in) or n < 2:
        raise ValueError(f"synthesize_tracks: tracks of lengths {[len(t) for t in tracks_in]}; expected N >= 2 or 1")
    tracks_in = [np.broadcast_to(t, (n,)) for t in tracks_in]
    if np.any(np.diff(np.stack(tracks_in[1:]), axis=0) <= 0):
        raise ValueError("synthesize_tracks: formants must satisfy f1 < f2 < f3 on every frame")
    n_samples = (n - 1) * hop + 1
    n_ctrl = n_samples // speech.CTRL_HOP + 2
    at_ctrl = np.arange(n_ctrl) * speech.CTRL_HOP / hop  # control frame -> fractional STFT frame
    ctrl = [np.interp(at_ctrl, np.arange(n), t) for t in tracks_in]
    formants = np.empty((len(speech._BANDWIDTHS), n_ctrl))
    formants[:3] = ctrl[1:]
    formants[3:] = np.array(speech._F_HIGH)[:, None]
    bandwidths = np.repeat(speech._BANDWIDTHS[:, None], n_ctrl, axis=1)
    bandwidths[:3] = tmf_bandwidth(formants[:3])
    tracks = dict(
        formants=formants, bandwidths=bandwidths, av=np.ones(n_ctrl), ah=np.zeros(n_ctrl), af=np.zeros((4, n_ctrl))
    )
    wav = speech.synthesize(
        np.random.default_rng(seed), tracks, ctrl[0], n_samples, level_db=np.zeros(n_ctrl), **(voice or VOICE)
    )
    return wav / np.max(np.abs(wav))


def sweep(factor: str, *, hop: int = 256, scale: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """One labelled trajectory: ``wav`` (float64), ``labels`` [N] (the swept factor, Hz) and ``values``
    [N, 4] (f0, f1, f2, f3 per frame). ``scale`` < 1 keeps the range with fewer points (smoke tests)."""
    if factor not in SWEEPS:
        raise ValueError(f"factor {factor!r}: expected one of {FACTORS}")
    points, low, high, fixed = SWEEPS[factor]
    n = max(8, int(round(points * scale)))
    labels = np.linspace(low, high, n)
    values = {f: np.full(n, fixed[f]) if f != factor else labels for f in FACTORS}
    wav = synthesize_tracks(*(values[f] for f in FACTORS), hop=hop, seed=seed + FACTORS.index(factor))
    return dict(wav=wav, labels=labels, values=np.stack([values[f] for f in FACTORS], axis=1))


def labelled_trajectories(*, hop: int = 256, scale: float = 1.0, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``{factor: sweep(factor)}`` for f0, f1, f2, f3."""
    return {f: sweep(f, hop=hop, scale=scale, seed=seed) for f in FACTORS}


# Vowel targets (adult male F1-F3 of SynthAV's phone table), scaled by a speaker's vocal-tract factor.
VOWELS = {
    name: tuple(speech._FORMANTS[speech.PHONE_ID[name]])
    for name in ("iy", "ih", "eh", "ae", "ah", "aa", "ao", "uh", "uw", "er")
}


def sustained_vowel(
    vowel: str, *, f0: float, vtl_factor: float = 1.0, frames: int = 48, hop: int = 256, seed: int = 0
) -> dict[str, np.ndarray]:
    """A steady vowel (the English-vowels stand-in of Table 3.3): ``wav`` and its true ``values`` [4]."""
    if vowel not in VOWELS:
        raise ValueError(f"vowel {vowel!r}: expected one of {sorted(VOWELS)}")
    f1, f2, f3 = (v * vtl_factor for v in VOWELS[vowel])
    wav = synthesize_tracks(np.full(frames, f0), f1, f2, f3, hop=hop, seed=seed)
    return dict(wav=wav, values=np.array([f0, f1, f2, f3]))
