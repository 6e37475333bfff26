"""Noise generators, the noise folder and the noisy-speech builder (data for unsupervised speech enhancement)."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from data_pipelines import noise, noisy_speech, registry
from data_pipelines.corpora.base import Skip
from data_pipelines.sources import open_source
from data_pipelines.spec import DataError

SR = noise.SAMPLE_RATE


def _slope_db_per_octave(x: np.ndarray, low: float = 125.0, high: float = 4000.0) -> float:
    freqs, power = noise.long_term_spectrum([x])
    band = (freqs >= low) & (freqs <= high)
    return float(np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band]), 1)[0])


@pytest.fixture(scope="module")
def generated():
    return noise.GeneratedNoise("test", seed=0)


@pytest.mark.parametrize("kind, slope", [("white", 0.0), ("pink", -3.0), ("brown", -6.0), ("modulated", -3.0)])
def test_coloured_noise_slopes(generated, kind, slope):
    x, origin = generated.segment(kind, 4 * SR, "utt")
    assert origin == f"generated:{kind}"
    assert np.sqrt(np.mean(x**2)) == pytest.approx(1.0, abs=1e-3)
    assert _slope_db_per_octave(x) == pytest.approx(slope, abs=0.25)


def test_speech_shaped_noise_follows_the_talkers_spectrum(generated):
    x, _ = generated.segment("speech_shaped", 4 * SR, "utt")
    freqs, target = noise.long_term_spectrum(generated.talkers)
    _, got = noise.long_term_spectrum([x])
    band = (freqs >= 100) & (freqs <= 7000)
    # Same colour to within a couple of dB everywhere (speech spans ~50 dB over this band).
    diff = 10 * np.log10(got[band] / target[band])
    assert np.std(diff) < 2.0
    assert 10 * np.log10(target[band].max() / target[band].min()) > 30


def test_modulated_and_babble_are_not_stationary(generated):
    frame = SR // 20
    for kind in ("modulated", "babble"):
        x, _ = generated.segment(kind, 4 * SR, "utt")
        level = 10 * np.log10(np.mean(x[: x.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
        assert np.std(level) > 1.5, kind  # white noise's 50 ms levels vary by ~0.3 dB
    white, _ = generated.segment("white", 4 * SR, "utt")
    level = 10 * np.log10(np.mean(white.reshape(-1, frame) ** 2, axis=1))
    assert np.std(level) < 0.5


def test_noise_is_deterministic_and_the_sets_are_disjoint(generated):
    a, _ = generated.segment("pink", SR, "utt1")
    assert np.array_equal(a, noise.GeneratedNoise("test", seed=0).segment("pink", SR, "utt1")[0])
    assert not np.allclose(a, generated.segment("pink", SR, "utt2")[0])
    train = noise.GeneratedNoise("train", seed=0)
    assert not np.allclose(a, train.segment("pink", SR, "utt1")[0])
    # Babble talkers of the two sets share no utterance.
    test_talkers = {t[:1000].tobytes() for t in generated.talkers}
    assert not test_talkers & {t[:1000].tobytes() for t in train.talkers}


def test_mix_at_snr_is_exact_and_checked():
    rng = np.random.default_rng(0)
    clean, n = rng.standard_normal(SR), rng.standard_normal(SR) * 3
    for snr in (-5.0, 0.0, 2.5, 17.5):
        noisy, scaled = noise.mix_at_snr(clean, n, snr)
        assert noise.snr_db(clean, scaled) == pytest.approx(snr, abs=0.01)
        assert np.allclose(noisy, clean + scaled)
    with pytest.raises(DataError, match="outside the supported range"):
        noise.mix_at_snr(clean, n, 60.0)
    with pytest.raises(DataError, match="silent"):
        noise.mix_at_snr(np.zeros(SR), n, 0.0)
    with pytest.raises(DataError, match="snrs_db.*outside the supported range"):
        noisy_speech.NoisySpeechConfig(name="bad", snrs_db=(0.0, -30.0))


def test_quantized_mixture_keeps_the_sum_and_the_snr():
    rng = np.random.default_rng(1)
    clean = rng.standard_normal(SR)
    _, scaled = noise.mix_at_snr(clean, rng.standard_normal(SR), -5.0)
    q = noisy_speech.quantize_mixture(clean, scaled)
    assert np.array_equal(q["noisy"].astype(np.int32), q["clean"].astype(np.int32) + q["noise"])
    assert noise.snr_db(q["clean"], q["noise"]) == pytest.approx(-5.0, abs=0.01)
    assert np.abs(q["noisy"]).max() <= 32767


def test_silent_or_short_speech_is_skipped(generated):
    silent = {"utterance_id": "u0", "audio": np.zeros(SR, np.int16)}
    result = noisy_speech.mix_record(silent, "speech[test]", 0.0, "white", generated)
    assert isinstance(result, Skip) and "silent speech" in result.reason and "u0" in result.file
    short = {"utterance_id": "u1", "audio": np.full(SR // 4, 1000, np.int16)}
    assert "too short" in noisy_speech.mix_record(short, "speech[test]", 0.0, "white", generated).reason


def test_noise_folder_reads_usable_files_and_lists_the_others(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "cafe").mkdir()
    (tmp_path / "street").mkdir()
    sf.write(tmp_path / "cafe" / "a.wav", 0.1 * rng.standard_normal(4 * SR), SR)
    sf.write(tmp_path / "street" / "b.wav", 0.1 * rng.standard_normal(3 * SR), 8000)  # resampled to 16 kHz
    sf.write(tmp_path / "street" / "silent.wav", np.zeros(2 * SR), SR)
    sf.write(tmp_path / "street" / "short.wav", 0.1 * rng.standard_normal(SR // 4), SR)
    (tmp_path / "street" / "empty.wav").write_bytes(b"")
    (tmp_path / "street" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (tmp_path / "README.txt").write_text("notes")
    recordings, skips = noise.read_noise_folder(str(tmp_path))
    assert sorted((r.kind, r.audio.size) for r in recordings) == [("cafe", 4 * SR), ("street", 6 * SR)]
    reasons = {os.path.basename(s.file): s.reason for s in skips}
    assert set(reasons) == {"silent.wav", "short.wav", "empty.wav", "broken.wav", "README.txt"}
    assert reasons["silent.wav"].startswith("silent") and reasons["short.wav"].startswith("too short")
    assert reasons["empty.wav"].startswith("empty") and reasons["README.txt"].startswith("not an audio file")
    # The train set reads the first 3/4 of each recording, the test set the rest.
    cafe = next(r for r in recordings if r.kind == "cafe").audio.astype(np.float64)
    for noise_set, (lo, hi) in (("train", (0, 3 * SR)), ("test", (3 * SR, 4 * SR))):
        source = noise.FolderNoise(recordings, noise_set, seed=0)
        segment, origin = source.segment("cafe", SR // 2, "utt")
        start = int(origin.rsplit("@", 1)[1])
        assert lo <= start < hi
        part = cafe[lo:hi]
        expected = np.resize(np.roll(part, -(start - lo)), SR // 2)
        assert np.allclose(segment, expected / np.sqrt(np.mean(expected**2)))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match="no usable recording"):
        noise.read_noise_folder(str(tmp_path / "bad"))
    with pytest.raises(DataError, match="is not a directory"):
        noise.read_noise_folder(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def noisy_dir(speech_smoke_data_dir):
    registry.prepare("noisy_speech/wsj0_qut_like_smoke", speech_smoke_data_dir)
    return speech_smoke_data_dir


def test_builder_mixes_every_split_at_the_configured_snrs(noisy_dir):
    name = "noisy_speech/wsj0_qut_like_smoke"
    seen = {}
    for split in ("train", "validation", "test"):
        source = open_source(name, split, noisy_dir)
        speech = open_source("synthav/speech_smoke", split, noisy_dir)
        speakers = {speech[i]["speaker"].decode() for i in range(len(speech))}
        for i in range(len(source)):
            r = noisy_speech.decode_mixture(source[i], "test")
            assert r["speaker"] in speakers  # the split's own (speaker-disjoint) speakers
            assert min(abs(r["snr_db"] - snr) for snr in (-5.0, 0.0, 5.0)) < 0.01
            assert noise.snr_db(r["clean"], r["noisy"] - r["clean"]) == pytest.approx(r["snr_db"], abs=0.01)
            assert r["noise_source"] == f"generated:{r['noise_kind']}"
            seen.setdefault(split, []).append((round(r["snr_db"]), r["noise_kind"]))
    assert len(seen["train"]) == 6 and len(seen["test"]) >= 3
    assert {snr for snr, _ in seen["test"][:3]} == {-5, 0, 5}  # stored in the balanced order: SNR cycles fastest
    # Balanced: one block of the (SNR, kind) crossing has distinct pairs.
    assert len(set(seen["train"])) == len(seen["train"])
    with open(os.path.join(noisy_dir, "noisy_speech", "wsj0_qut_like_smoke", "1.0.0", "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["examples"]["train"] == 6
    assert all(row["reason"].startswith(("too short", "silent")) for row in manifest["skipped"])


def test_builder_is_deterministic(noisy_dir):
    """A stored mixture is a function of (seed, noise set, kind, utterance id) alone: remixing the clean record
    gives the same samples."""
    source = noise.GeneratedNoise("test", seed=0)
    stored = open_source("noisy_speech/wsj0_qut_like_smoke", "test", noisy_dir)
    speech = open_source("synthav/speech_smoke", "test", noisy_dir)
    by_id = {speech[i]["utterance_id"].decode(): speech[i] for i in range(len(speech))}
    for i in range(len(stored)):
        r = noisy_speech.decode_mixture(stored[i], "test")
        snr = float(np.round(r["snr_db"]))
        _, again = noisy_speech.mix_record(by_id[r["utterance_id"]], "x", snr, r["noise_kind"], source)
        assert np.array_equal(again["noisy"], stored[i]["noisy"]) and np.array_equal(again["clean"], stored[i]["clean"])


def test_av_config_stores_the_face_over_the_clean_speech(noisy_dir):
    registry.prepare("noisy_speech/wsj0_qut_like_av_smoke", noisy_dir)
    av = open_source("noisy_speech/wsj0_qut_like_av_smoke", "test", noisy_dir)
    audio = open_source("noisy_speech/wsj0_qut_like_smoke", "test", noisy_dir)
    assert len(av) == len(audio)
    for i in range(len(av)):
        r, a = av[i], audio[i]
        assert np.array_equal(r["noisy"], a["noisy"])  # the same mixtures
        seconds = r["clean"].size / SR
        assert r["video"].shape[1:] == (64, 64, 3)
        assert abs(r["video"].shape[0] - seconds * 30) <= 1


def test_builder_with_a_noise_folder(noisy_dir, tmp_path):
    """A custom config mixing SynthAV speech with recorded noise: test mixtures come from the last quarter of each
    recording, and the unreadable file is listed in the manifest."""
    rng = np.random.default_rng(0)
    (tmp_path / "noise" / "cafe").mkdir(parents=True)
    sf.write(tmp_path / "noise" / "cafe" / "a.wav", 0.1 * rng.standard_normal(8 * SR), SR)
    (tmp_path / "noise" / "cafe" / "broken.wav").write_bytes(b"RIFF")
    options = {"speech": "synthav/speech_smoke", "noise_source": "folder", "splits": "test", "max_per_split": "2"}
    with pytest.raises(DataError, match="needs manual_dir"):
        noisy_speech.build("qut_like", noisy_dir, None, options)
    path = noisy_speech.build("qut_like", noisy_dir, str(tmp_path / "noise"), options)
    source = open_source("noisy_speech/qut_like", "test", noisy_dir)
    assert len(source) == 2
    for i in range(len(source)):
        r = noisy_speech.decode_mixture(source[i], "test")
        file, start = r["noise_source"].rsplit("@", 1)
        assert file.endswith("cafe/a.wav") and 6 * SR <= int(start) < 8 * SR and r["noise_kind"] == "cafe"
        assert noise.snr_db(r["clean"], r["noise"]) == pytest.approx(r["snr_db"], abs=0.01)
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    assert [os.path.basename(row["file"]) for row in manifest["skipped"]] == ["broken.wav"]
