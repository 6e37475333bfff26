"""Phonetics and source-filter speech synthesis for SynthAV.

Everything here runs on a *control grid* of CTRL_HOP samples (2.5 ms): the phone
timeline is turned into articulatory target tracks (formants, mouth opening and
width, source amplitudes), smoothed so that neighbouring phones coarticulate, and
the same tracks drive both the audio synthesizer here and the face renderer
(`face.py`). The synthesizer is a Klatt-style cascade:

  glottal flow derivative (Rosenberg pulse, per-cycle jitter/shimmer, spectral tilt)
  + aspiration noise  ->  F1..F7 resonators (coefficients updated every control frame)
  + parallel band-limited frication / stop-burst noise.

The voiced path uses the flow *derivative*, which is the lip-radiation first
difference folded into the source (the system is linear, so the order does not
matter); noise sources are white and need no radiation tilt.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import scipy.ndimage
import scipy.signal

SAMPLE_RATE = 16000
CTRL_HOP = 40  # samples per control frame (2.5 ms): the formant-filter update rate
CTRL_RATE = SAMPLE_RATE / CTRL_HOP

# Phone kinds.
SIL, VOWEL, STOP, NASAL, FRICATIVE, APPROXIMANT = range(6)
# Frication noise bands: (low, high) Hz of a 4th-order Butterworth band-pass.
LABIAL, ALVEOLAR, POSTALVEOLAR, VELAR = range(4)
_BAND_EDGES_HZ = ((1200, 7000), (3800, 7600), (2200, 5600), (1400, 3400))
_BAND_SOS = tuple(scipy.signal.butter(2, edges, "bandpass", output="sos", fs=SAMPLE_RATE) for edges in _BAND_EDGES_HZ)

# Phone inventory. F1-F3 are adult-male reference targets in Hz (vowels: Peterson &
# Barney 1952 averages; consonants: approximate loci), scaled per speaker by the
# vocal-tract factor. mouth_open (0..1, None = derived from F1 for vowels) and
# mouth_width (1 = neutral, >1 spread, <1 rounded) are the visual targets.
#  name   kind         voiced  F1   F2    F3   open  width band          fric gain
_PHONE_TABLE = (
    ("sil", SIL, 0, 300, 1400, 2400, 0.00, 1.00, -1, 0.0),
    ("iy", VOWEL, 1, 270, 2290, 3010, None, 1.18, -1, 0.0),
    ("ih", VOWEL, 1, 390, 1990, 2550, None, 1.12, -1, 0.0),
    ("eh", VOWEL, 1, 530, 1840, 2480, None, 1.08, -1, 0.0),
    ("ae", VOWEL, 1, 660, 1720, 2410, None, 1.08, -1, 0.0),
    ("ah", VOWEL, 1, 520, 1190, 2390, None, 1.00, -1, 0.0),
    ("aa", VOWEL, 1, 730, 1090, 2440, None, 0.96, -1, 0.0),
    ("ao", VOWEL, 1, 570, 840, 2410, None, 0.80, -1, 0.0),
    ("uh", VOWEL, 1, 440, 1020, 2240, None, 0.84, -1, 0.0),
    ("uw", VOWEL, 1, 300, 870, 2240, None, 0.70, -1, 0.0),
    ("er", VOWEL, 1, 490, 1350, 1690, None, 0.90, -1, 0.0),
    ("p", STOP, 0, 250, 900, 2100, 0.00, 1.00, LABIAL, 0.0),
    ("b", STOP, 1, 250, 900, 2100, 0.00, 1.00, LABIAL, 0.0),
    ("m", NASAL, 1, 250, 1000, 2200, 0.00, 1.00, -1, 0.0),
    ("f", FRICATIVE, 0, 300, 1100, 2300, 0.06, 1.00, LABIAL, 0.35),
    ("v", FRICATIVE, 1, 300, 1100, 2300, 0.06, 1.00, LABIAL, 0.2),
    ("t", STOP, 0, 300, 1700, 2600, 0.22, 1.04, ALVEOLAR, 0.0),
    ("d", STOP, 1, 300, 1700, 2600, 0.22, 1.04, ALVEOLAR, 0.0),
    ("n", NASAL, 1, 250, 1600, 2600, 0.22, 1.02, -1, 0.0),
    ("s", FRICATIVE, 0, 300, 1750, 2650, 0.10, 1.10, ALVEOLAR, 1.0),
    ("z", FRICATIVE, 1, 300, 1750, 2650, 0.10, 1.10, ALVEOLAR, 0.6),
    ("sh", FRICATIVE, 0, 300, 1900, 2400, 0.15, 0.78, POSTALVEOLAR, 1.0),
    ("k", STOP, 0, 300, 1900, 2300, 0.30, 1.00, VELAR, 0.0),
    ("g", STOP, 1, 300, 1900, 2300, 0.30, 1.00, VELAR, 0.0),
    ("l", APPROXIMANT, 1, 350, 1100, 2700, 0.30, 1.00, -1, 0.0),
    ("w", APPROXIMANT, 1, 300, 700, 2200, 0.12, 0.70, -1, 0.0),
    ("r", APPROXIMANT, 1, 350, 1100, 1600, 0.25, 0.85, -1, 0.0),
)
PHONES = tuple(row[0] for row in _PHONE_TABLE)
PHONE_ID = {name: i for i, name in enumerate(PHONES)}
_KIND = np.array([row[1] for row in _PHONE_TABLE])
_VOICED = np.array([row[2] for row in _PHONE_TABLE], bool)
_FORMANTS = np.array([row[3:6] for row in _PHONE_TABLE], np.float64)
# Jaw opening proportional to F1 (F1 rises as the jaw lowers): 270 Hz -> 0.13, 730 -> 0.95.
_MOUTH_OPEN = np.array([(row[3] - 200.0) / 560.0 if row[6] is None else row[6] for row in _PHONE_TABLE])
_MOUTH_WIDTH = np.array([row[7] for row in _PHONE_TABLE])
_BAND = np.array([row[8] for row in _PHONE_TABLE])
_FRIC_GAIN = np.array([row[9] for row in _PHONE_TABLE])
_BILABIAL = np.isin(np.arange(len(PHONES)), [PHONE_ID[p] for p in ("p", "b", "m")])

_VOWELS = np.flatnonzero(_KIND == VOWEL)
_ONSETS = [PHONE_ID[p] for p in ("p", "b", "m", "f", "v", "t", "d", "n", "s", "z", "sh", "k", "g", "l", "w", "r")]
_ONSET_P = np.array([4, 4, 6, 3, 2, 8, 6, 7, 7, 2, 2, 5, 2, 5, 4, 5], float)
_CODAS = [PHONE_ID[p] for p in ("p", "m", "f", "t", "d", "n", "s", "z", "sh", "k", "l", "r")]
_CODA_P = np.array([2, 4, 2, 7, 4, 8, 6, 3, 1, 3, 4, 3], float)
# Nominal segment durations (s) before scaling to the utterance's speaking rate.
_NOMINAL_DUR = {VOWEL: 0.11, STOP: 0.085, NASAL: 0.065, FRICATIVE: 0.095, APPROXIMANT: 0.06}
_STOP_CLOSURE = 0.6  # fraction of a stop segment that is closure; the rest is burst + release

# Fixed higher formants F4-F7 (male reference, Hz) and base bandwidths of F1..F7 (Hz).
# At 16 kHz the poles above F5 matter: without them an all-pole cascade drops
# ~60 dB/octave above F5, far steeper than speech.
_F_HIGH = (3500.0, 4500.0, 5500.0, 6500.0)
_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 220.0, 280.0, 350.0, 450.0])
_MAX_FORMANT = 7600.0


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Phone segments of one utterance (times in seconds)."""

    phones: np.ndarray  # int [S]
    starts: np.ndarray  # [S]
    ends: np.ndarray  # [S]
    stressed: np.ndarray  # bool [S], True on vowels of stressed syllables


def plan_phones(rng: np.random.Generator, duration: float, syllable_rate: float) -> Timeline:
    """Random CV/CVC/V/VC syllables between leading and trailing silences.

    The syllable count follows `syllable_rate` (syllables per second of speech);
    nominal segment durations are then scaled to fill the speech span exactly.
    """
    lead, trail = rng.uniform(0.12, 0.3, size=2)
    speech = duration - lead - trail
    # A short phrase pause inside longer utterances.
    pause = rng.uniform(0.12, 0.22) if speech > 1.6 and rng.random() < 0.35 else 0.0
    n_syl = max(2, int(round((speech - pause) * syllable_rate)))
    pause_after = rng.integers(1, n_syl) if pause else -1
    stressed_syl = rng.random(n_syl) < 0.35
    stressed_syl[rng.integers(n_syl)] = True

    sil = PHONE_ID["sil"]
    segments = [(sil, lead, False, True)]  # (phone, duration, stressed vowel, fixed duration)
    for i in range(n_syl):
        structure = rng.choice(4, p=(0.5, 0.3, 0.1, 0.1))  # CV, CVC, V, VC
        syllable = [int(rng.choice(_VOWELS))]
        if structure in (0, 1):
            syllable.insert(0, int(rng.choice(_ONSETS, p=_ONSET_P / _ONSET_P.sum())))
        if structure in (1, 3):
            syllable.append(int(rng.choice(_CODAS, p=_CODA_P / _CODA_P.sum())))
        phrase_final = i == n_syl - 1 or i == pause_after - 1
        for p in syllable:
            d = _NOMINAL_DUR[_KIND[p]] * rng.uniform(0.8, 1.25)
            if _KIND[p] == VOWEL:
                d *= (1.35 if stressed_syl[i] else 1.0) * (1.3 if phrase_final else 1.0)  # stress, final lengthening
            segments.append((p, d, bool(_KIND[p] == VOWEL and stressed_syl[i]), False))
        if i == pause_after - 1:
            segments.append((sil, pause, False, True))
    segments.append((sil, trail, False, True))
    phones, durs, stress, fixed = (np.array(x) for x in zip(*segments))

    durs[~fixed] *= (duration - durs[fixed].sum()) / durs[~fixed].sum()
    ends = np.cumsum(durs)
    starts = ends - durs
    ends[-1] = max(ends[-1], duration) + 1.0  # the final silence covers any rounding tail
    return Timeline(phones, starts, ends, stress)


def _segment_index(timeline: Timeline, t: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(timeline.ends, t, side="right"), len(timeline.phones) - 1)


def phone_at(timeline: Timeline, t: np.ndarray) -> np.ndarray:
    return timeline.phones[_segment_index(timeline, t)]


def _smooth(x: np.ndarray, sigma_s: float) -> np.ndarray:
    """Gaussian smoothing along the last axis, sigma in seconds (control grid)."""
    return scipy.ndimage.gaussian_filter1d(x, sigma_s * CTRL_RATE, axis=-1, mode="nearest")


def smooth_noise(rng: np.random.Generator, n: int, sigma_s: float) -> np.ndarray:
    """Unit-variance smooth random walk on the control grid (Gaussian-filtered white noise)."""
    sigma = sigma_s * CTRL_RATE
    x = scipy.ndimage.gaussian_filter1d(rng.standard_normal(n), sigma, mode="reflect")
    return x * np.sqrt(2.0 * np.sqrt(np.pi) * sigma)  # analytic std of filtered white noise


def articulation(
    timeline: Timeline, n_ctrl: int, vtl: float, artic_gain: float, jaw: float, width_offset: float
) -> dict:
    """Control-rate articulatory tracks shared by the audio and the face.

    Returns formants [7, n] (Hz, after coarticulation smoothing), bandwidths [7, n],
    voicing amplitude `av`, aspiration `ah`, frication `af` [4, n] (one per band),
    `mouth_open` (0..1) and `mouth_width` (relative), all float64.
    """
    t = np.arange(n_ctrl) / CTRL_RATE
    seg = _segment_index(timeline, t)
    ph = timeline.phones[seg]
    kind = _KIND[ph]
    voiced = _VOICED[ph]
    stop = kind == STOP
    release_t = timeline.starts + _STOP_CLOSURE * (timeline.ends - timeline.starts)
    since_release = t - release_t[seg]
    released = stop & (since_release >= 0)

    # Emotional articulation (hyper/hypo-articulation, jaw drop) widens the jaw
    # opening and, with it, F1; bilabials still close the lips completely.
    open_target = np.where(_BILABIAL[ph], 0.0, np.clip(_MOUTH_OPEN[ph] * artic_gain + jaw * (kind != SIL), 0, 1))
    f_target = _FORMANTS[ph].T.copy()
    f_target[0] += 280.0 * (open_target - _MOUTH_OPEN[ph]) * (kind == VOWEL)
    formants = np.empty((len(_BANDWIDTHS), n_ctrl))
    formants[:3] = _smooth(f_target, 0.02) * vtl
    formants[3:] = np.minimum(np.array(_F_HIGH) * vtl, _MAX_FORMANT)[:, None]

    nasal = _smooth((kind == NASAL).astype(float), 0.01)
    bandwidths = np.repeat(_BANDWIDTHS[:, None], n_ctrl, axis=1)
    bandwidths[0] += 100.0 * nasal  # nasal murmur: damped, low F1

    # Vowels swell and fade within the syllable nucleus rather than switching on flat.
    nucleus = np.sin(np.pi * np.clip((t - timeline.starts[seg]) / (timeline.ends[seg] - timeline.starts[seg]), 0, 1))
    av = np.select(
        [
            kind == VOWEL,
            kind == APPROXIMANT,
            kind == NASAL,
            (kind == FRICATIVE) & voiced,
            stop & voiced & ~released,
            stop & voiced & released,
        ],
        [np.where(timeline.stressed[seg], 1.12, 1.0) * (0.7 + 0.3 * nucleus), 0.7, 0.5, 0.35, 0.1, 0.5],
        0.0,
    )
    ah = np.where(released & ~voiced, 0.35, 0.0)
    af = np.zeros((4, n_ctrl))
    band = _BAND[ph]
    fric = kind == FRICATIVE
    burst = np.where(released, np.exp(-np.maximum(since_release, 0) / 0.008), 0.0)
    for b in range(4):
        af[b] = np.where(fric & (band == b), _FRIC_GAIN[ph], 0.0) + np.where(stop & (band == b), burst, 0.0)

    return dict(
        formants=formants,
        bandwidths=bandwidths,
        av=_smooth(av, 0.006),
        ah=_smooth(ah, 0.004),
        af=_smooth(af, 0.003),
        mouth_open=np.clip(_smooth(open_target, 0.018), 0.0, 1.0),
        mouth_width=_smooth(_MOUTH_WIDTH[ph] + width_offset, 0.02),
        voiced=voiced,
    )


def f0_contour(
    rng: np.random.Generator, timeline: Timeline, n_ctrl: int, base_hz: float, range_st: float, final_rise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Intonation on the control grid: pitch accents, declination, drift, micro-prosody.

    Returns (f0 in Hz [n], accent track [n] in 0..~1, used for head nods / brow raises).
    """
    t = np.arange(n_ctrl) / CTRL_RATE
    accent = np.zeros(n_ctrl)
    for p, s, e, stressed in zip(timeline.phones, timeline.starts, timeline.ends, timeline.stressed):
        if _KIND[p] == VOWEL:
            h = rng.uniform(0.6, 1.0) if stressed else rng.uniform(0.0, 0.25)
            accent += h * np.exp(-0.5 * ((t - 0.5 * (s + e)) / max(0.05, 0.5 * (e - s))) ** 2)
    speech = np.flatnonzero(timeline.phones != PHONE_ID["sil"])
    t0, t1 = timeline.starts[speech[0]], timeline.ends[speech[-1]]
    declination = np.interp(t, [t0, t1], [0.3, -0.5])
    rise = final_rise / (1.0 + np.exp(-(t - (t1 - 0.12)) / 0.04))
    drift = 0.15 * smooth_noise(rng, n_ctrl, 0.15)
    ph = phone_at(timeline, t)
    # Micro-prosody: f0 dips during voiced obstruent constrictions.
    obstruent = _smooth((_VOICED[ph] & np.isin(_KIND[ph], (STOP, FRICATIVE))).astype(float), 0.01)
    semitones = range_st * (accent + declination + rise + drift) - 0.6 * obstruent
    return np.clip(base_hz * 2.0 ** (semitones / 12.0), 75.0, 400.0), accent


def _rosenberg_derivative(phase: np.ndarray, open_quotient: float) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg-B glottal flow and its derivative over one period (phase in [0, 1)).

    Opening lasts 3/4 of the open phase, closing 1/4 ending in an abrupt closure
    (the main excitation). The derivative is scaled so its negative peak is -1,
    making the excitation level independent of f0.
    """
    t_open = open_quotient * 0.75
    t_close = open_quotient - t_open
    opening = phase < t_open
    closing = (phase >= t_open) & (phase < open_quotient)
    flow = np.where(opening, 0.5 * (1 - np.cos(np.pi * phase / t_open)), 0.0)
    flow = np.where(closing, np.cos(0.5 * np.pi * (phase - t_open) / t_close), flow)
    deriv = np.where(opening, 0.5 * np.pi / t_open * np.sin(np.pi * phase / t_open), 0.0)
    deriv = np.where(closing, -0.5 * np.pi / t_close * np.sin(0.5 * np.pi * (phase - t_open) / t_close), deriv)
    return flow, deriv * (2.0 * t_close / np.pi)


@numba.njit(cache=True)
def _resonator_cascade(x, b0, a1, a2, hop):
    """Cascade of 2nd-order resonators y = b0 x + a1 y[-1] + a2 y[-2], coefficients per block."""
    n_sec = b0.shape[1]
    s1 = np.zeros(n_sec)
    s2 = np.zeros(n_sec)
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        f = n // hop
        v = x[n]
        for k in range(n_sec):
            out = b0[f, k] * v + a1[f, k] * s1[k] + a2[f, k] * s2[k]
            s2[k] = s1[k]
            s1[k] = out
            v = out
        y[n] = v
    return y


def _klatt_coefficients(freq: np.ndarray, bw: np.ndarray):
    """Klatt (1980) resonator coefficients with unity gain at DC."""
    T = 1.0 / SAMPLE_RATE
    a2 = -np.exp(-2 * np.pi * bw * T)
    a1 = 2 * np.exp(-np.pi * bw * T) * np.cos(2 * np.pi * freq * T)
    return 1.0 - a1 - a2, a1, a2


# Frication level relative to the formant-cascade output, set so that /s/ peaks
# about 10 dB below stressed vowels as in natural speech.
_FRICATION_LEVEL = 0.25


def synthesize(
    rng: np.random.Generator,
    tracks: dict,
    f0_ctrl: np.ndarray,
    n_samples: int,
    open_quotient: float,
    tilt: float,
    breathiness: float,
    jitter: float,
    shimmer: float,
    level_db: np.ndarray,
) -> np.ndarray:
    """Source-filter synthesis of the clean speech waveform (float64, arbitrary scale)."""
    n_ctrl = f0_ctrl.shape[0]
    pos = np.arange(n_samples) / CTRL_HOP
    grid = np.arange(n_ctrl)
    at_audio = lambda x: np.interp(pos, grid, x)  # noqa: E731  control grid -> samples

    # Glottal source: integrate f0 to a phase, then perturb each cycle's period
    # (jitter) and amplitude (shimmer) with per-cycle random draws.
    f0 = at_audio(f0_ctrl)
    phase0 = np.cumsum(f0) / SAMPLE_RATE
    n_cycles = int(phase0[-1] * 1.3) + 4
    jit = 1.0 + jitter * rng.standard_normal(n_cycles)
    phase = np.cumsum(f0 * jit[phase0.astype(np.int64)]) / SAMPLE_RATE
    cycle = phase.astype(np.int64)
    flow, dflow = _rosenberg_derivative(phase - cycle, open_quotient)
    shim = 1.0 + shimmer * rng.standard_normal(n_cycles)
    gain = 10.0 ** (at_audio(level_db) / 20.0)
    av = at_audio(tracks["av"]) * gain
    voiced = dflow * shim[cycle] * av
    # Spectral tilt (voice quality): a one-pole low-pass, steeper for breathy/soft voice.
    voiced = scipy.signal.lfilter([1.0 - tilt], [1.0, -tilt], voiced)

    noise = rng.standard_normal(n_samples)
    # Aspiration: noise modulated by the glottal flow (breathy voice) plus the
    # post-release aspiration of voiceless stops; it excites the same tract.
    aspiration = noise * (0.15 * breathiness * av * (0.3 + flow) + 0.12 * at_audio(tracks["ah"]) * gain)

    b0, a1, a2 = _klatt_coefficients(tracks["formants"], tracks["bandwidths"])
    out = _resonator_cascade(voiced + aspiration, b0.T.copy(), a1.T.copy(), a2.T.copy(), CTRL_HOP)

    fric_noise = rng.standard_normal(n_samples)
    for band, sos in enumerate(_BAND_SOS):
        env = tracks["af"][band]
        if env.max() > 0:
            out += _FRICATION_LEVEL * scipy.signal.sosfilt(sos, fric_noise) * at_audio(env) * gain
    return out
