"""Grain pipelines: alignment with the STFT, determinism, per-process blocks, bad input."""

import numpy as np
import pytest
from conftest import SMOKE_DATASET

from avrep import audio as audio_lib
from data_pipelines import pipelines, sources
from data_pipelines.spec import AudioFraming, DataError, PipelineSpec


def _source(data_dir, split="train"):
    return sources.open_source(SMOKE_DATASET, split, data_dir)


def test_random_frames_are_frames_of_the_centered_stft(smoke_data_dir):
    src = _source(smoke_data_dir)
    framing = AudioFraming(n_fft=1024, hop=533)
    spec = PipelineSpec(kind="frames", examples_per_batch=1, frames_per_example=6, modalities=("audio", "video"))
    it = pipelines.training_iterator(src, spec, framing, seed=3)
    batch = next(it)
    windows = batch["audio"][0]  # [6, 1024]
    frames = np.asarray(audio_lib.power_spectrogram(windows, n_fft=1024, hop=533, center=False))[:, 0]
    # Find the utterance these frames came from and check each equals a row of its full STFT.
    for i in range(len(src)):
        utt = pipelines.decode_utterance(src[i], 533, "test")
        full = np.asarray(audio_lib.power_spectrogram(utt["wav"], n_fft=1024, hop=533, center=True))
        matches = [
            np.flatnonzero(np.all(np.isclose(full, f, rtol=1e-4, atol=1e-6 * full.max()), axis=1)) for f in frames
        ]
        if all(len(m) for m in matches):
            starts = [int(m[0]) for m in matches]
            np.testing.assert_array_equal(batch["video"][0], utt["video"][starts])  # same frame indices
            return
    pytest.fail("pipeline audio frames are not frames of any utterance's centre-padded STFT")


def test_windows_align_audio_and_video(smoke_data_dir):
    src = _source(smoke_data_dir)
    spec = PipelineSpec(kind="windows", examples_per_batch=2, frames_per_example=10)
    batch = next(pipelines.training_iterator(src, spec, AudioFraming(hop=533), seed=0))
    assert batch["audio"].shape == (2, 9 * 533 + 1024)
    assert batch["video"].shape == (2, 10, 64, 64, 3)
    power = np.asarray(audio_lib.power_spectrogram(batch["audio"], n_fft=1024, hop=533, center=False))
    assert power.shape == (2, 10, 513)


def test_pipeline_is_deterministic_and_seed_dependent(smoke_data_dir):
    src = _source(smoke_data_dir)
    spec = PipelineSpec(kind="frames", examples_per_batch=4, frames_per_example=3, modalities=("video",))

    def take(seed):
        return next(pipelines.training_iterator(src, spec, AudioFraming(), seed=seed))["video"]

    a, b, c = take(1), take(1), take(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_process_blocks_reassemble_the_single_process_batch(smoke_data_dir):
    src = _source(smoke_data_dir)
    spec = PipelineSpec(kind="frames", examples_per_batch=6, frames_per_example=2, modalities=("video",))
    single = pipelines.training_iterator(src, spec, AudioFraming(), seed=5)
    parts = [
        pipelines.training_iterator(src, spec, AudioFraming(), seed=5, process_index=p, process_count=3)
        for p in range(3)
    ]
    for _ in range(4):  # crosses an epoch boundary of the 16-utterance split
        whole = next(single)["video"]
        np.testing.assert_array_equal(whole, np.concatenate([next(p)["video"] for p in parts]))


def test_iterator_state_restores_the_same_batches(smoke_data_dir):
    src = _source(smoke_data_dir)
    spec = PipelineSpec(kind="frames", examples_per_batch=2, frames_per_example=2, modalities=("audio",))
    it = pipelines.training_iterator(src, spec, AudioFraming(), seed=0)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["audio"] for _ in range(3)]
    fresh = pipelines.training_iterator(src, spec, AudioFraming(), seed=0)
    fresh.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(fresh)["audio"], e)


@pytest.mark.parametrize("modalities", [("audio",), ("video",), ("audio", "video")])
def test_slim_record_cache_changes_no_batch_and_holds_only_needed_fields(smoke_data_dir, modalities):
    src = _source(smoke_data_dir)
    spec = PipelineSpec(kind="frames", examples_per_batch=4, frames_per_example=3, modalities=modalities)
    plain = pipelines.training_iterator(src, spec, AudioFraming(), seed=4)
    cached = pipelines.training_iterator(src, spec, AudioFraming(), seed=4, cache_mb=64)
    for _ in range(10):  # 40 crops of a 16-utterance split: most reads hit the cache
        expected, got = next(plain), next(cached)
        assert sorted(got) == sorted(expected) == sorted({"audio": "audio", "video": "video"}[m] for m in modalities)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    cache = pipelines._SlimCache(src, modalities, max_bytes=2**30)
    slim, record = cache[0], src[0]
    assert cache[0] is slim  # served from memory the second time
    assert slim["video"].shape[0] == record["video"].shape[0]  # audio-only keeps the frame count ...
    assert slim["video"].nbytes == (record["video"].nbytes if "video" in modalities else 0)  # ... not the pixels
    tiny = pipelines._SlimCache(src, modalities, max_bytes=1000)
    tiny[0]
    assert not tiny._cache  # over budget: read, not kept


@pytest.mark.parametrize(
    "record, field",
    [
        ({"audio": np.zeros(0, np.int16), "video": np.zeros((3, 8, 8, 3), np.uint8)}, "audio"),
        ({"audio": np.ones(1000, np.int16), "video": np.zeros((0, 8, 8, 3), np.uint8)}, "video"),
        ({"audio": np.zeros(1000, np.int16), "video": np.zeros((3, 8, 8, 3), np.uint8)}, "audio"),
    ],
)
def test_bad_records_name_the_record_and_field(record, field):
    with pytest.raises(DataError, match=rf"synthav\[train\] record 7: field '{field}'"):
        pipelines.decode_utterance(record, 533, "synthav[train] record 7")


def test_corrupt_source_record_is_named(smoke_data_dir):
    src = _source(smoke_data_dir)

    class Broken:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise ValueError("Unexpected end of buffer")

    src._source = Broken()
    with pytest.raises(DataError, match=r"mdvae_smoke\[train\].*record 2 cannot be decoded"):
        src[2]


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(DataError, match="cannot open dataset synthav/mdvae_smoke"):
        sources.open_source(SMOKE_DATASET, "train", str(tmp_path))
