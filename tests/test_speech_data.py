"""Speech-only data for the DVAE family: SynthAV's speech view, the speech-folder builder (a fake folder with
bad files), and the ``speech_windows`` pipeline against librosa's STFT with the sine window."""

import json
import os
import re
import shutil

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import tensorflow_datasets as tfds
from conftest import SMOKE_DATASET

from avrep import audio as audio_lib
from data_pipelines import build as build_lib
from data_pipelines import pipelines, registry, sources
from data_pipelines.corpora.base import MANIFEST
from data_pipelines.corpora.speech_folder import _read_split_lists
from data_pipelines.spec import AudioFraming, DataError, PipelineSpec, decode_speech, speech_utterances
from data_pipelines.synthav import generator

SPEECH = "synthav/speech_smoke"
N_FFT, HOP, T = 1024, 256, 50
WINDOW_SAMPLES = (T - 1) * HOP + N_FFT
SPLITS = ("train", "validation", "test")


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _records(name, data_dir):
    """split -> {utterance_id: record} of every split the dataset has."""
    out = {}
    for split in SPLITS:
        try:
            source = sources.open_source(name, split, data_dir)
        except DataError:
            continue
        out[split] = {_text(r["utterance_id"]): r for r in map(source.__getitem__, range(len(source)))}
    return out


@pytest.fixture(scope="module")
def speech_dir(speech_smoke_data_dir):
    return speech_smoke_data_dir


# ---- SynthAV's speech view ----------------------------------------------------------------------------------


def test_speech_view_holds_the_av_utterances_audio_trimmed_with_their_labels(speech_dir, smoke_data_dir):
    speech, av = _records(SPEECH, speech_dir), _records(SMOKE_DATASET, smoke_data_dir)
    assert set(speech) == set(av) == set(SPLITS)
    speakers = {}
    for split in SPLITS:
        assert set(speech[split]) == set(av[split])  # the same utterances in the same splits
        for uid, rec in speech[split].items():
            ref = av[split][uid]
            assert "video" not in rec
            for label in ("speaker", "speaker_index", "gender", "emotion", "intensity"):
                assert rec[label] == ref[label], (uid, label)
            start, n = int(rec["trim_start"]), rec["audio"].size
            assert rec["audio"].dtype == np.int16 and 0 < n < ref["audio"].size
            np.testing.assert_array_equal(rec["audio"], ref["audio"][start : start + n])  # the same samples
            _, (lo, hi) = librosa.effects.trim(ref["audio"].astype(np.float32), top_db=30)
            assert (start, start + n) == (lo, hi)  # trimmed at 30 dB, as the DVAE papers' code
            assert 1 + n // HOP >= T  # every utterance holds one window of the DVAE setting
            speakers.setdefault(_text(rec["speaker"]), set()).add(split)
    assert all(len(s) == 1 for s in speakers.values())  # speaker-disjoint
    info = tfds.builder(SPEECH, data_dir=speech_dir).info
    assert info.metadata["speech_view_of"] == "mdvae_smoke" and info.metadata["trim_db"] == 30.0


def test_generator_speech_only_is_the_same_audio():
    speaker = generator.make_speakers(2, seed=0)[1]
    full = generator.synthesize_utterance(speaker, 3, 2, seed=11, min_seconds=1.2, max_seconds=1.6)
    speech = generator.synthesize_utterance(speaker, 3, 2, seed=11, min_seconds=1.2, max_seconds=1.6, video=False)
    assert set(speech) == {"audio"}
    np.testing.assert_array_equal(speech["audio"], full["audio"])


# ---- the speech_windows pipeline ---------------------------------------------------------------------------


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_speech_windows_are_frames_of_librosas_sine_window_stft(speech_dir, pad_mode):
    source = sources.open_source(SPEECH, "train", speech_dir)
    framing = AudioFraming(n_fft=N_FFT, hop=HOP, pad_mode=pad_mode)
    spec = PipelineSpec(kind="speech_windows", examples_per_batch=4, frames_per_example=T, modalities=("audio",))
    batch = next(pipelines.training_iterator(source, spec, framing, seed=2))
    assert set(batch) == {"audio"}
    assert batch["audio"].shape == (4, WINDOW_SAMPLES) and batch["audio"].dtype == np.float32
    power = np.asarray(audio_lib.power_spectrogram(batch["audio"], N_FFT, HOP, window="sine", center=False))
    assert power.shape == (4, T, N_FFT // 2 + 1)
    utterances = list(speech_utterances(source, HOP))
    sine = scipy.signal.windows.cosine(N_FFT)  # sin(pi (n + 1/2) / N), built independently of avrep
    for row, window in enumerate(batch["audio"]):
        found = None
        for utt in utterances:
            padded = audio_lib.pad_for_center(utt["wav"], N_FFT, pad_mode)
            for t0 in range(utt["num_frames"] - T + 1):
                if np.array_equal(padded[t0 * HOP : t0 * HOP + WINDOW_SAMPLES], window):
                    found = utt, t0
                    break
            if found:
                break
        assert found, f"window {row} is not a hop-aligned crop of any centre-padded utterance"
        utt, t0 = found
        spectrum = librosa.stft(utt["wav"], n_fft=N_FFT, hop_length=HOP, window=sine, center=True, pad_mode=pad_mode)
        reference = (np.abs(spectrum) ** 2).T
        assert reference.shape[0] == utt["num_frames"]
        np.testing.assert_allclose(power[row], reference[t0 : t0 + T], rtol=1e-3, atol=1e-5 * reference.max())


def test_speech_windows_read_an_audiovisual_dataset_too(smoke_data_dir):
    source = sources.open_source(SMOKE_DATASET, "train", smoke_data_dir)
    spec = PipelineSpec(kind="speech_windows", examples_per_batch=2, frames_per_example=T, modalities=("audio",))
    batch = next(pipelines.training_iterator(source, spec, AudioFraming(hop=HOP), seed=0, cache_mb=16))
    assert set(batch) == {"audio"} and batch["audio"].shape == (2, WINDOW_SAMPLES)


def test_speech_windows_name_a_short_utterance_and_refuse_video(speech_dir):
    source = sources.open_source(SPEECH, "train", speech_dir)
    long = PipelineSpec(kind="speech_windows", examples_per_batch=1, frames_per_example=5000, modalities=("audio",))
    with pytest.raises(DataError, match=r"speech_smoke\[train\].*utterance .*S\d{3}_.* frames, fewer than the window"):
        next(pipelines.training_iterator(source, long, AudioFraming(hop=HOP), seed=0))
    video = PipelineSpec(kind="speech_windows", examples_per_batch=1, frames_per_example=T)
    with pytest.raises(ValueError, match="speech_windows"):
        pipelines.training_iterator(source, video, AudioFraming(hop=HOP), seed=0)


def test_decode_speech_needs_no_video_and_names_bad_audio():
    utt = decode_speech({"audio": np.array([0, 100, -400, 50], np.int16)}, HOP, "x")
    np.testing.assert_allclose(utt["wav"], [0, 0.25, -1, 0.125])
    assert utt["num_frames"] == 1
    for audio in (np.zeros(0, np.int16), np.zeros(300, np.int16)):
        with pytest.raises(DataError, match=r"speech\[test\] record 3: field 'audio'"):
            decode_speech({"audio": audio}, HOP, "speech[test] record 3")
    with pytest.raises(DataError, match="field 'video'"):
        pipelines.decode_utterance({"audio": np.ones(300, np.int16)}, HOP, "x")


# ---- the speech-folder builder -------------------------------------------------------------------------------

GOOD = {  # relative path -> sample rate (resampled to 16 kHz by the builder)
    "spk01/a.wav": 16000,
    "spk01/b.flac": 22050,
    "spk02/a.flac": 8000,
    "spk02/sub/b.wav": 16000,
    "spk03/a.wav": 16000,
    "spk03/b.wav": 44100,
    "spk04/a.wav": 16000,
    "spk04/b.flac": 16000,
    "spk05/a.wav": 16000,
}
BAD = {  # relative path -> the reason the manifest must give
    "spk01/empty.wav": "empty file",
    "spk02/notes.wav": "cannot open media file",
    "spk03/silent.wav": "audio is silent",
    "spk04/short.wav": r"too short: \d+ STFT frames \(hop 256, silence trimmed at 30.0 dB\), fewer than .* 50",
    "spk05/no_samples.wav": "audio track has no samples|cannot open",
    "README.md": "not an audio file",
    "loose.wav": "no speaker: the file does not lie below a speaker directory",
}
SECONDS = 1.3


def _speech(index: int, seconds: float = SECONDS) -> np.ndarray:
    speaker = generator.make_speakers(index + 1, seed=0)[index]
    audio = generator.synthesize_utterance(
        speaker, index % 8, 1, seed=index, min_seconds=seconds, max_seconds=seconds, video=False
    )["audio"]
    return audio.astype(np.float32) / 32768.0


def _write_folder(root):
    for k, (rel, rate) in enumerate(GOOD.items()):
        wav = _speech(k)
        if rate != 16000:
            wav = scipy.signal.resample_poly(wav, rate, 16000)
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        sf.write(os.path.join(root, rel), wav, rate, subtype="PCM_16")
    open(os.path.join(root, "spk01/empty.wav"), "wb").close()
    with open(os.path.join(root, "spk02/notes.wav"), "w") as f:
        f.write("this is not audio\n" * 20)
    sf.write(os.path.join(root, "spk03/silent.wav"), np.zeros(24000, np.float32), 16000, subtype="PCM_16")
    sf.write(os.path.join(root, "spk04/short.wav"), _speech(3)[:5000], 16000, subtype="PCM_16")
    sf.write(os.path.join(root, "spk05/no_samples.wav"), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write("a corpus\n")
    sf.write(os.path.join(root, "loose.wav"), _speech(1), 16000, subtype="PCM_16")


def _manifest(dataset_dir, root):
    with open(os.path.join(dataset_dir, MANIFEST)) as f:
        manifest = json.load(f)
    return manifest, {os.path.relpath(r["file"], root): r["reason"] for r in manifest["skipped"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("speech_folder"))
    _write_folder(root)
    return root


@pytest.fixture(scope="module")
def folder_built(folder, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("speech_folder_tfds"))
    registry.prepare("speech_folder/speech", data_dir, manual_dir=folder, num_workers=1)
    return data_dir, os.path.join(data_dir, "speech_folder", "speech", "1.0.0")


def test_speech_folder_lists_every_bad_file_and_splits_by_speaker(folder, folder_built):
    data_dir, dataset_dir = folder_built
    manifest, skipped = _manifest(dataset_dir, folder)
    assert set(skipped) == set(BAD), skipped
    for rel, reason in BAD.items():
        assert re.search(reason, skipped[rel]), (rel, skipped[rel])
    assert sum(manifest["examples"].values()) == len(GOOD)
    records = _records("speech_folder/speech", data_dir)
    assert set(records) == set(SPLITS)
    split_of = {}
    for split, recs in records.items():
        for uid, rec in recs.items():
            speaker = _text(rec["speaker"])
            assert uid.split("/")[0] == speaker and split_of.setdefault(speaker, split) == split  # speaker-disjoint
            assert rec["audio"].dtype == np.int16 and np.abs(rec["audio"]).max() > 32000  # peak-normalised
            assert 1 + rec["audio"].size // HOP >= T and "video" not in rec
    assert {u for recs in records.values() for u in recs} == {rel.rsplit(".", 1)[0] for rel in GOOD}
    assert sorted(split_of.values()) == ["test", "train", "train", "train", "validation"]
    info = tfds.builder("speech_folder/speech", data_dir=data_dir).info
    assert info.metadata["split_by"] == "speaker" and info.metadata["trim_db"] == 30.0


def test_speech_folder_trims_and_resamples(folder, folder_built):
    data_dir, _ = folder_built
    records = {u: r for recs in _records("speech_folder/speech", data_dir).values() for u, r in recs.items()}
    reference = _speech(0)  # spk01/a.wav, written at 16 kHz
    rec = records["spk01/a"]
    start, n = int(rec["trim_start"]), rec["audio"].size
    _, (lo, hi) = librosa.effects.trim(reference, top_db=30)
    assert abs(start - lo) <= 512 and abs(start + n - hi) <= 512  # the same trim, up to one trim hop
    expected = reference[start : start + n] / np.abs(reference).max()
    np.testing.assert_allclose(rec["audio"] / 32767.0 / 0.99, expected, atol=2e-3)
    for uid, rate in [("spk01/b", 22050), ("spk02/a", 8000), ("spk03/b", 44100)]:
        assert records[uid]["trim_start"] + records[uid]["audio"].size <= SECONDS * 16000 + 64, uid  # at 16 kHz


def test_speech_folder_without_speakers_splits_by_utterance_with_a_warning(folder, tmp_path):
    argv = ["speech_folder", "--config", "flat", "--manual_dir", folder, "--data_dir", str(tmp_path)]
    argv += ["--option", "speaker_level=0", "--option", "trim_db=none", "--num_workers", "1"]
    with pytest.warns(UserWarning, match="speakers unknown.*splitting by utterance"):
        build_lib.main(argv)
    manifest, skipped = _manifest(str(tmp_path / "speech_folder" / "flat" / "1.0.0"), folder)
    assert "loose.wav" not in skipped and sum(manifest["examples"].values()) == len(GOOD) + 1
    info = tfds.builder("speech_folder/flat", data_dir=str(tmp_path)).info  # a custom config, read from files
    assert info.metadata["split_by"] == "utterance" and info.metadata["trim_db"] is None
    records = {u: r for recs in _records("speech_folder/flat", str(tmp_path)).values() for u, r in recs.items()}
    for uid in ("spk01/a", "spk01/b", "spk02/a", "spk03/b"):  # untrimmed: the whole file, resampled to 16 kHz
        assert records[uid]["trim_start"] == 0 and abs(records[uid]["audio"].size - SECONDS * 16000) <= 64, uid
    with pytest.raises(ValueError, match="unknown option 'speaker_levle'"):
        build_lib.build("speech_folder", "x", folder, str(tmp_path), options={"speaker_levle": 2})
    with pytest.raises(ValueError, match="needs a new name"):
        build_lib.build("speech_folder", "speech", folder, str(tmp_path), options={"speaker_level": 2})


def test_speech_folder_follows_split_lists(folder, tmp_path):
    root = str(tmp_path / "listed")
    shutil.copytree(folder, root)
    lists = {
        "train.txt": "spk01\nspk02/\n./spk03/a.wav\n",
        "validation.txt": "# held-out speaker\nspk04\nspk03/b  # an utterance id, no extension\n",
        "test.txt": "spk05/a.wav\nmissing/file.wav\n",
    }
    for name, text in lists.items():
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
    data_dir = str(tmp_path / "tfds")
    manifest, skipped = _manifest(build_lib.build("speech_folder", "speech", root, data_dir, num_workers=1), root)
    assert "not in any split list" in skipped["loose.wav"] and "not in any split list" in skipped["spk03/silent.wav"]
    assert "listed in test.txt but not found" in skipped["missing/file.wav"]
    records = _records("speech_folder/speech", data_dir)
    got = {split: sorted(recs) for split, recs in records.items()}
    assert got == {
        "train": ["spk01/a", "spk01/b", "spk02/a", "spk02/sub/b", "spk03/a"],
        "validation": ["spk03/b", "spk04/a", "spk04/b"],
        "test": ["spk05/a"],
    }
    assert tfds.builder("speech_folder/speech", data_dir=data_dir).info.metadata["split_by"] == "lists"


@pytest.mark.parametrize(
    "options, path, speaker",
    [
        ({}, "19/198/19-198-0001.flac", "19"),  # LibriSpeech subset folder
        ({"speaker_level": 2}, "si_tr_s/011/011c0201.wav", "011"),  # WSJ0
        ({"speaker_level": 3}, "TRAIN/DR1/FCJF0/SA1.WAV", "FCJF0"),  # TIMIT
        ({"speaker_level": 2}, "si_tr_s/011c0201.wav", ""),  # above the speaker level: unknown
        ({"speaker_pattern": r"(p\d+)_\d+\.wav$"}, "clean_trainset_wav/p226_001.wav", "p226"),  # VoiceBank
        ({"speaker_pattern": r"(p\d+)_\d+\.wav$"}, "clean_trainset_wav/readme.wav", ""),
    ],
)
def test_speaker_of_a_path(tmp_path, options, path, speaker):
    from data_pipelines.corpora.speech_folder import SpeechFolder

    config = build_lib.custom_config(SpeechFolder, "custom", options) if options else "speech"
    assert SpeechFolder(config=config, data_dir=str(tmp_path))._speaker(path) == speaker


def test_split_lists_reject_an_entry_in_two_lists(tmp_path):
    (tmp_path / "train.txt").write_text("spk01\n")
    (tmp_path / "test.txt").write_text("\nspk01\n")
    with pytest.raises(DataError, match=r"test.txt:2: 'spk01' is also listed in train.txt"):
        _read_split_lists(str(tmp_path))


def test_speech_folder_without_audio_names_the_layout(tmp_path):
    (tmp_path / "src" / "spk01").mkdir(parents=True)
    (tmp_path / "src" / "spk01" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no audio file"):
        build_lib.build("speech_folder", "speech", str(tmp_path / "src"), str(tmp_path / "tfds"), num_workers=1)
