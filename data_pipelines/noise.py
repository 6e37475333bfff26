"""Noise for speech-enhancement test sets: generated kinds that need no download, and a folder of recordings.

Generated kinds (16 kHz, float64, unit RMS; each draw deterministic from its seed):

  white          flat power spectrum
  pink           power ∝ 1/f   (-3 dB per octave)
  brown          power ∝ 1/f²  (-6 dB per octave)
  speech_shaped  the long-term average spectrum of SynthAV speech (stationary, speech-like colour)
  modulated      pink noise whose amplitude follows 1 + depth·sin(2π f t + φ), f in 0.5-8 Hz (syllable rates)
  babble         the sum of several SynthAV talkers, each at equal RMS

Coloured noises are shaped in the frequency domain (one FFT of white Gaussian noise), so their spectral slope is
exact on average. The talkers of babble and of the speech-shaped spectrum are SynthAV speakers made from the
noise seed and the noise set (``GeneratedNoise``), never speakers of SynthAV's own datasets, and the two noise
sets ("train" for noise-model training, "test") get disjoint talkers and disjoint random draws.

A noise folder (QUT-NOISE, DEMAND, your own recordings) holds audio files anywhere below it; a file's kind is its
first directory below the folder (or its name when it lies at the top). Every recording is split in time:
the first ``train_fraction`` of it is the train noise set, the rest the test set, so the two never share a sample.
Files that cannot be used (unreadable, empty, silent, shorter than ``min_seconds``) are returned as skips with
the reason, for the builder's manifest.

``mix_at_snr`` scales a noise to a given SNR against clean speech: 10·log10(Σ clean² / Σ noise²) over the whole
utterance.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np
import scipy.signal

from data_pipelines import media
from data_pipelines.corpora.base import Skip
from data_pipelines.spec import DataError

SAMPLE_RATE = media.SAMPLE_RATE
NOISE_KINDS = ("white", "pink", "brown", "speech_shaped", "modulated", "babble")
NOISE_SETS = ("train", "test")
SNR_RANGE_DB = (-20.0, 40.0)  # mixtures outside this range are refused (far beyond both thesis test sets)
_COLOUR_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def seed_of(*parts) -> int:
    """A stable 32-bit seed from strings and ints (Python's ``hash`` is salted per process)."""
    return int(np.random.SeedSequence([zlib.crc32(str(p).encode()) for p in parts]).generate_state(1)[0])


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(x**2))
    if not np.isfinite(rms) or rms == 0:
        raise DataError(f"noise: a generated or read noise segment is silent or non-finite (RMS {rms})")
    return x / rms


def shaped_noise(rng: np.random.Generator, n: int, power_of_frequency) -> np.ndarray:
    """Gaussian noise of ``n`` samples whose power spectrum is ``power_of_frequency(f in Hz)`` (DC removed)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    gain = np.zeros_like(freqs)
    gain[1:] = np.sqrt(power_of_frequency(freqs[1:]))
    return _unit_rms(np.fft.irfft(spectrum * gain, n))


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Power ∝ 1/f^exponent: 0 white, 1 pink (-3 dB per octave), 2 brown (-6 dB per octave)."""
    return shaped_noise(rng, n, lambda f: f**-exponent)


def long_term_spectrum(waveforms, n_fft: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in Hz, mean power per bin) of ``waveforms`` together (Welch, Hann, 50 % overlap), each
    waveform weighted by its length."""
    total, weight = 0.0, 0
    for w in waveforms:
        freqs, p = scipy.signal.welch(np.asarray(w, np.float64), SAMPLE_RATE, nperseg=n_fft)
        total, weight = total + p * w.size, weight + w.size
    if not weight:
        raise ValueError("long_term_spectrum: no waveform given")
    return freqs, total / weight


def modulated_noise(rng: np.random.Generator, n: int, depth: float = 0.8) -> np.ndarray:
    """Pink noise with a sinusoidal amplitude envelope at a random rate of 0.5-8 Hz and random phase."""
    rate, phase = rng.uniform(0.5, 8.0), rng.uniform(0, 2 * np.pi)
    envelope = 1.0 + depth * np.sin(2 * np.pi * rate * np.arange(n) / SAMPLE_RATE + phase)
    return _unit_rms(coloured_noise(rng, n, 1.0) * envelope)


def babble(rng: np.random.Generator, n: int, utterances, talkers: int = 6) -> np.ndarray:
    """The sum of ``talkers`` utterances drawn from ``utterances`` (distinct ones while there are enough), each
    at unit RMS, circularly shifted by a random offset and looped to ``n`` samples."""
    if not utterances:
        raise ValueError("babble: no talker utterances given")
    chosen = rng.choice(len(utterances), size=talkers, replace=talkers > len(utterances))
    out = np.zeros(n)
    for i in chosen:
        u = _unit_rms(np.asarray(utterances[i], np.float64))
        out += np.resize(np.roll(u, int(rng.integers(u.size))), n)
    return _unit_rms(out)


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """10·log10(Σ clean² / Σ noise²) over the whole signals."""
    return float(10 * np.log10(np.sum(np.square(clean, dtype=np.float64)) / np.sum(np.square(noise, dtype=np.float64))))


def check_snr(snr: float, where: str) -> float:
    low, high = SNR_RANGE_DB
    if not np.isfinite(snr) or not low <= snr <= high:
        raise DataError(f"{where}: mixture SNR {snr} dB is outside the supported range [{low}, {high}] dB")
    return float(snr)


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr: float) -> tuple[np.ndarray, np.ndarray]:
    """(noisy = clean + scaled noise, scaled noise) with ``snr_db(clean, scaled noise) == snr``; float64."""
    clean = np.asarray(clean, np.float64)
    noise = np.asarray(noise, np.float64)
    if clean.shape != noise.shape:
        raise ValueError(f"mix_at_snr: clean {clean.shape} and noise {noise.shape} differ in shape")
    check_snr(snr, "mix_at_snr")
    clean_energy, noise_energy = np.sum(clean**2), np.sum(noise**2)
    if clean_energy == 0 or noise_energy == 0:
        raise DataError("mix_at_snr: the clean speech or the noise is silent (zero energy)")
    noise = noise * np.sqrt(clean_energy / noise_energy / 10.0 ** (snr / 10.0))
    return clean + noise, noise


def synthav_talkers(noise_set: str, seed: int, speakers: int = 12, per_speaker: int = 2) -> list[np.ndarray]:
    """Utterances (float64, silence trimmed at 30 dB) of SynthAV speakers made for a noise set: the speaker seed
    is derived from (seed, noise set), so the talkers are disjoint from SynthAV's datasets and between sets."""
    from data_pipelines.synthav import generator

    speaker_seed = seed_of("noise talkers", seed, noise_set) % (2**31)
    out = []
    for speaker in generator.make_speakers(speakers, seed=speaker_seed):
        for take, (emotion, intensity) in enumerate(generator.utterance_plan(speaker, per_speaker)):
            audio = generator.synthesize_utterance(
                speaker, emotion, intensity, seed=seed_of(speaker_seed, take), video=False
            )["audio"]
            trimmed, _ = media.trim_silence(audio.astype(np.float64) / 32768.0, 30.0)
            out.append(trimmed)
    return out


class GeneratedNoise:
    """The generated kinds of one noise set; ``segment(kind, n, key)`` is a function of (seed, set, kind, key)."""

    def __init__(self, noise_set: str, seed: int = 0, kinds=NOISE_KINDS):
        if noise_set not in NOISE_SETS:
            raise ValueError(f"noise set must be one of {NOISE_SETS}, got {noise_set!r}")
        unknown = set(kinds) - set(NOISE_KINDS)
        if unknown or not kinds:
            raise DataError(f"noise kinds: {sorted(unknown) or 'none given'}; expected some of {NOISE_KINDS}")
        self.noise_set, self.seed, self.kinds = noise_set, seed, tuple(kinds)
        self._talkers = None
        self._spectrum = None

    @property
    def talkers(self) -> list[np.ndarray]:
        if self._talkers is None:
            self._talkers = synthav_talkers(self.noise_set, self.seed)
        return self._talkers

    def speech_spectrum(self, f: np.ndarray) -> np.ndarray:
        if self._spectrum is None:
            self._spectrum = long_term_spectrum(self.talkers)
        freqs, power = self._spectrum
        return np.interp(f, freqs, power)

    def segment(self, kind: str, n: int, key: str) -> tuple[np.ndarray, str]:
        """(unit-RMS noise of ``n`` samples, where it came from)."""
        if kind not in self.kinds:
            raise DataError(f"noise kind {kind!r} is not one of this source's kinds {self.kinds}")
        rng = np.random.default_rng(seed_of(self.seed, self.noise_set, kind, key))
        if kind in _COLOUR_EXPONENT:
            x = coloured_noise(rng, n, _COLOUR_EXPONENT[kind])
        elif kind == "speech_shaped":
            x = shaped_noise(rng, n, self.speech_spectrum)
        elif kind == "modulated":
            x = modulated_noise(rng, n)
        else:
            x = babble(rng, n, self.talkers)
        return x, f"generated:{kind}"


@dataclasses.dataclass(frozen=True)
class NoiseRecording:
    path: str
    kind: str
    audio: np.ndarray  # float32, 16 kHz mono


def read_noise_folder(root: str, min_seconds: float = 1.0, extensions=None) -> tuple[list[NoiseRecording], list[Skip]]:
    """Every usable recording under ``root`` (decoded to 16 kHz mono) and a Skip for every other file."""
    from data_pipelines.corpora.speech_folder import AUDIO_EXTENSIONS

    extensions = tuple(e.lower() for e in (extensions or AUDIO_EXTENSIONS))
    if not root or not os.path.isdir(root):
        raise DataError(f"noise folder {root!r} is not a directory; expected audio files ({', '.join(extensions)})")
    recordings, skips = [], []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if os.path.splitext(name)[1].lower() not in extensions:
                skips.append(Skip(path, f"not an audio file: extension not one of {extensions}"))
                continue
            try:
                if os.path.getsize(path) == 0:
                    raise media.MediaError(path, "empty file (0 bytes)")
                audio = media.decode_audio(path)
                peak = float(np.max(np.abs(audio))) if audio.size else 0.0
                if not np.isfinite(peak) or peak < 1e-6:
                    raise media.MediaError(path, f"silent or non-finite recording (peak {peak})")
                if audio.size < min_seconds * SAMPLE_RATE:
                    raise media.MediaError(path, f"too short: {audio.size / SAMPLE_RATE:.2f} s < {min_seconds} s")
            except media.MediaError as e:
                skips.append(Skip(e.path, e.reason))
                continue
            except Exception as e:  # a decoder failing in an unforeseen way on a bad file: recorded, not fatal
                skips.append(Skip(path, f"unexpected {type(e).__name__}: {e}"))
                continue
            kind = rel.split("/")[0] if "/" in rel else os.path.splitext(rel)[0]
            recordings.append(NoiseRecording(path, kind, audio))
    if not recordings:
        raise DataError(
            f"noise folder {root!r} holds no usable recording ({len(skips)} files skipped: "
            f"{sorted({s.reason.split(':')[0] for s in skips})})"
        )
    return recordings, skips


class FolderNoise:
    """Segments of recorded noise: the train set draws from the first ``train_fraction`` of every recording,
    the test set from the rest; ``segment(kind, n, key)`` picks one of the kind's recordings and a random start
    (looping a part shorter than ``n``)."""

    def __init__(self, recordings: list[NoiseRecording], noise_set: str, seed: int = 0, train_fraction: float = 0.75):
        if noise_set not in NOISE_SETS:
            raise ValueError(f"noise set must be one of {NOISE_SETS}, got {noise_set!r}")
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        self.noise_set, self.seed, self.train_fraction = noise_set, seed, train_fraction
        self.by_kind: dict[str, list[NoiseRecording]] = {}
        for r in recordings:
            self.by_kind.setdefault(r.kind, []).append(r)
        self.kinds = tuple(sorted(self.by_kind))

    def part(self, recording: NoiseRecording) -> tuple[int, int]:
        """[start, end) samples of ``recording`` that belong to this noise set."""
        cut = int(round(recording.audio.size * self.train_fraction))
        return (0, cut) if self.noise_set == "train" else (cut, recording.audio.size)

    def segment(self, kind: str, n: int, key: str) -> tuple[np.ndarray, str]:
        if kind not in self.by_kind:
            raise DataError(f"noise kind {kind!r}: no recording of it in the noise folder (kinds: {self.kinds})")
        rng = np.random.default_rng(seed_of(self.seed, self.noise_set, kind, key))
        options = self.by_kind[kind]
        recording = options[int(rng.integers(len(options)))]
        start, end = self.part(recording)
        part = recording.audio[start:end].astype(np.float64)
        offset = int(rng.integers(part.size))
        return _unit_rms(np.resize(np.roll(part, -offset), n)), f"{recording.path}@{start + offset}"
