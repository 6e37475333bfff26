"""SynthAV generator: API contract, determinism, and that the ground truth is really
what the audio and the pixels show (f0 via pYIN, mouth opening via mouth-interior
darkness, blinks via eye-region contrast)."""

import itertools

import librosa
import numpy as np
import pytest

from data_pipelines.synthav import generator as g

SPEAKERS = g.make_speakers(8, seed=3)
FEMALE = next(s for s in SPEAKERS if s.gender == 0)
MALE = next(s for s in SPEAKERS if s.gender == 1)
NEUTRAL, ANGRY, HAPPY, SAD, SURPRISED = (g.EMOTIONS.index(e) for e in ("neutral", "angry", "happy", "sad", "surprised"))
VOWELS = [i for i, p in enumerate(g.PHONES) if p in ("iy", "ih", "eh", "ae", "ah", "aa", "ao", "uh", "uw", "er")]


def _luma(video):
    return video.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _rows(lo, hi, size):
    """Pixel index slice of [lo, hi] in the generator's [-1, 1] image coordinates."""
    return slice(int((lo + 1) * size / 2), int(np.ceil((hi + 1) * size / 2)))


def _mean_f0(out):
    return out["f0"][out["voiced"] > 0].mean()


def _first_utterance(sp, condition, **kwargs):
    """Utterance of the first seed that satisfies `condition` (deterministic search)."""
    for seed in range(40):
        out = g.synthesize_utterance(sp, NEUTRAL, 0, seed=seed, **kwargs)
        if condition(out):
            return out
    raise AssertionError(f"no utterance of {sp.speaker_id} satisfies the condition")


def test_constants_match_mead():
    assert g.EMOTIONS == ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
    assert g.INTENSITY_LEVELS == 3 and g.SAMPLE_RATE == 16000
    assert g.SETTINGS == {"mdvae": dict(image_size=64, fps=30), "vqmae": dict(image_size=96, fps=25)}
    assert g.PHONES[0] == "sil"


def test_speakers_identity_factors():
    speakers = g.make_speakers(40, seed=0)
    assert [s.speaker_id for s in speakers] == [f"S{i:03d}" for i in range(1, 41)]
    assert speakers == g.make_speakers(40, seed=0)
    assert g.make_speakers(10, seed=0) == speakers[:10]  # speaker i depends only on (seed, i)
    assert speakers != g.make_speakers(40, seed=1)
    female = [s for s in speakers if s.gender == 0]
    male = [s for s in speakers if s.gender == 1]
    assert len(female) == len(male) == 20
    assert all(165 <= s.f0_hz <= 255 for s in female) and all(85 <= s.f0_hz <= 155 for s in male)
    ratio = np.mean([s.vtl_factor for s in female]) / np.mean([s.vtl_factor for s in male])
    assert 1.1 <= ratio <= 1.2
    # Faces differ between speakers (colour and geometry).
    assert len({s.skin_rgb for s in speakers}) == 40 and len({s.face_width for s in speakers}) == 40


def test_split_speakers_disjoint_proportions_and_gender():
    speakers = g.make_speakers(40, seed=0)
    split = g.split_speakers(speakers)
    assert {k: len(v) for k, v in split.items()} == {"train": 30, "validation": 6, "test": 4}
    ids = [s.speaker_id for part in split.values() for s in part]
    assert sorted(ids) == sorted(s.speaker_id for s in speakers)  # disjoint and complete
    for part in split.values():
        genders = [s.gender for s in part]
        assert abs(genders.count(0) - genders.count(1)) <= 1
    assert split == g.split_speakers(speakers)
    assert split != g.split_speakers(speakers, seed=1)
    small = g.split_speakers(g.make_speakers(3, seed=0))
    assert all(len(v) == 1 for v in small.values())


def test_pretraining_corpora_share_no_speaker_with_their_labelled_sets():
    from data_pipelines.synthav import builder

    configs = {c.name: c for c in builder.BUILDER_CONFIGS}
    for pretraining, labelled in builder.PRETRAINING_CORPORA.items():
        unlabelled = builder.speakers_of(configs[pretraining])
        labelled_speakers = builder.speakers_of(configs[labelled])
        ids = {s.speaker_id for s in unlabelled}
        assert not ids & {s.speaker_id for s in labelled_speakers}, pretraining
        assert len(ids) == len(unlabelled) >= 2 * len(labelled_speakers)  # many more speakers
        # New identities, not renamed ones: no voice or face is repeated across the two sets.
        assert not {(s.f0_hz, s.skin_rgb) for s in unlabelled} & {(s.f0_hz, s.skin_rgb) for s in labelled_speakers}
        assert configs[pretraining].image_size == configs[labelled].image_size
        assert configs[pretraining].fps == configs[labelled].fps
    assert len(builder.speakers_of(configs["vqmae_pretrain"])) == 6 * len(builder.speakers_of(configs["vqmae"]))
    # A set started further on is the tail of a longer one: the same speakers, so ranges decide overlap.
    assert g.make_speakers(3, seed=0, first_speaker=2)[0] == g.make_speakers(3, seed=0)[2]


def test_utterance_plan_covers_conditions():
    sp = SPEAKERS[0]
    plan = g.utterance_plan(sp, 24)
    assert sorted(plan) == sorted(itertools.product(range(8), range(3)))
    assert sorted(e for e, _ in g.utterance_plan(sp, 8)) == list(range(8))
    assert len(g.utterance_plan(sp, 30)) == 30


@pytest.mark.parametrize("setting", ["mdvae", "vqmae"])
def test_shapes_dtypes_and_ranges(setting):
    cfg = g.SETTINGS[setting]
    out = g.synthesize_utterance(SPEAKERS[0], HAPPY, 1, seed=5, **cfg)
    n, t, size = len(out["audio"]), len(out["video"]), cfg["image_size"]
    assert out["audio"].dtype == np.int16 and out["audio"].ndim == 1
    assert 1.5 <= n / g.SAMPLE_RATE <= 3.0
    assert abs(n / g.SAMPLE_RATE - t / cfg["fps"]) <= 0.5 / cfg["fps"]
    assert 0.88 <= np.abs(out["audio"]).max() / 32767 <= 0.91
    assert out["video"].shape == (t, size, size, 3) and out["video"].dtype == np.uint8
    for key, shape in dict(
        f0=(t,),
        voiced=(t,),
        formants=(t, 3),
        loudness=(t,),
        mouth_open=(t,),
        mouth_width=(t,),
        eye_open=(t,),
        head_pose=(t, 3),
        gaze=(t, 2),
    ).items():
        assert out[key].shape == shape and out[key].dtype == np.float32, key
    assert out["phones"].shape == (t,) and out["phones"].dtype == np.int32
    assert set(np.unique(out["voiced"])) == {0.0, 1.0}
    assert np.all((out["f0"] == 0) == (out["voiced"] == 0))
    assert out["phones"][0] == out["phones"][-1] == 0  # leading and trailing silence
    assert np.all((out["mouth_open"] >= 0) & (out["mouth_open"] <= 1))
    assert np.all((out["eye_open"] >= 0) & (out["eye_open"] <= 1))
    assert np.abs(out["head_pose"]).max() < 20 and np.abs(out["gaze"]).max() <= 1
    # A face video, not noise: frames vary across pixels but change little between frames.
    video = out["video"].astype(np.float32)
    assert video.std() > 20
    assert np.abs(np.diff(video, axis=0)).mean() < 0.1 * np.abs(video - video.mean((1, 2), keepdims=True)).mean()


def test_deterministic_and_seed_dependent():
    a = g.synthesize_utterance(SPEAKERS[1], ANGRY, 2, seed=7)
    b = g.synthesize_utterance(SPEAKERS[1], ANGRY, 2, seed=7)
    c = g.synthesize_utterance(SPEAKERS[1], ANGRY, 2, seed=8)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert len(a["audio"]) != len(c["audio"]) or not np.array_equal(a["audio"], c["audio"])
    # The content does not depend on how it is rendered.
    d = g.synthesize_utterance(SPEAKERS[1], ANGRY, 2, seed=7, **g.SETTINGS["vqmae"])
    np.testing.assert_array_equal(a["audio"], d["audio"])


def _pyin_error(out):
    x = out["audio"].astype(np.float32) / 32768
    f0, flag, _ = librosa.pyin(x, fmin=60, fmax=500, sr=g.SAMPLE_RATE, frame_length=1024, hop_length=160)
    times = librosa.times_like(f0, sr=g.SAMPLE_RATE, hop_length=160)
    t_frames = np.arange(len(out["f0"])) / 30
    est = np.interp(t_frames, times, np.nan_to_num(f0))
    voiced = (out["voiced"] > 0) & (np.interp(t_frames, times, flag.astype(float)) > 0.5)
    assert voiced.sum() >= 10
    return np.median(np.abs(est[voiced] - out["f0"][voiced]) / out["f0"][voiced])


def test_f0_truth_matches_pyin_and_gender():
    female = g.synthesize_utterance(FEMALE, NEUTRAL, 0, seed=11)
    male = g.synthesize_utterance(MALE, NEUTRAL, 0, seed=11)
    assert _pyin_error(female) < 0.05 and _pyin_error(male) < 0.05
    assert _mean_f0(female) > _mean_f0(male) * 1.3
    assert male["f0"][male["voiced"] > 0].min() >= 75 and female["f0"].max() <= 400


def test_emotion_prosody():
    for sp in (FEMALE, MALE):
        f0 = {
            e: np.mean([_mean_f0(g.synthesize_utterance(sp, e, 2, seed=s)) for s in range(2)])
            for e in (ANGRY, SURPRISED, SAD)
        }
        assert f0[ANGRY] > f0[SAD] * 1.1 and f0[SURPRISED] > f0[SAD] * 1.1, (sp.speaker_id, f0)


def test_syllable_rate_and_frication():
    fricatives = [g.PHONES.index(p) for p in ("s", "z", "sh", "f")]
    out = _first_utterance(SPEAKERS[2], lambda o: np.isin(o["phones"], fricatives).sum() >= 3, fps=25)
    ph = out["phones"]
    is_vowel = np.isin(ph, VOWELS)
    nuclei = np.count_nonzero(is_vowel[1:] & ~is_vowel[:-1])
    speech = np.flatnonzero(ph != 0)
    assert 2.5 <= nuclei / ((speech[-1] - speech[0] + 1) / 25) <= 8.0
    # Loudness truth: silences far below vowels, and aligned with the level measured in
    # the noisy int16 audio over the same 1/fps windows.
    assert np.median(out["loudness"][is_vowel]) > out["loudness"][0] + 20
    x = out["audio"].astype(np.float64) / 32767
    centres = np.round(np.arange(len(ph)) / 25 * g.SAMPLE_RATE).astype(int)
    measured = [10 * np.log10(np.mean(x[max(c - 320, 0) : c + 320] ** 2)) for c in centres]
    assert np.median(np.abs(np.array(measured)[is_vowel] - out["loudness"][is_vowel])) < 0.5
    # Fricatives carry their energy above 3 kHz, vowels below.
    spec = np.abs(librosa.stft(x, n_fft=1024, hop_length=640)) ** 2  # hop = 1 video frame at 25 fps
    hf = spec[192:].sum(0) / spec.sum(0)  # share above 3 kHz
    m = min(spec.shape[1], len(ph))
    fric = np.isin(ph[:m], fricatives)
    assert hf[:m][fric].mean() > 0.5 > hf[:m][is_vowel[:m]].mean()


@pytest.mark.parametrize("size,fps", [(64, 30), (96, 25)])
def test_mouth_open_drives_mouth_darkness_and_f1(size, fps):
    for sp, emotion in ((SPEAKERS[0], NEUTRAL), (SPEAKERS[3], ANGRY), (SPEAKERS[6], HAPPY)):
        out = g.synthesize_utterance(sp, emotion, 2, seed=3, image_size=size, fps=fps)
        box = _luma(out["video"])[
            :,
            _rows(sp.mouth_y - 0.08, sp.mouth_y + 0.22, size),
            _rows(-0.8 * sp.mouth_width, 0.8 * sp.mouth_width, size),
        ]
        dark = np.clip(np.median(box) - box, 0, None).mean(axis=(1, 2))  # darkness below the typical level
        assert np.corrcoef(dark, out["mouth_open"])[0, 1] > 0.7, (sp.speaker_id, emotion)
        voiced = out["voiced"] > 0
        f1 = out["formants"][voiced, 0]
        assert np.corrcoef(f1, out["mouth_open"][voiced])[0, 1] > 0.8
    assert 200 <= f1.min() and f1.max() <= 1000


def test_formant_ranges_scale_with_speaker():
    f, m = (g.synthesize_utterance(sp, NEUTRAL, 0, seed=2) for sp in (FEMALE, MALE))
    for out in (f, m):
        v = out["voiced"] > 0
        lo, hi = out["formants"][v].min(0), out["formants"][v].max(0)
        assert np.all(lo >= [200, 600, 1500]) and np.all(hi <= [1000, 2900, 3700]), (lo, hi)
    ratio = np.median(f["formants"][:, 2]) / np.median(m["formants"][:, 2])
    assert ratio == pytest.approx(FEMALE.vtl_factor / MALE.vtl_factor, rel=0.08)


def test_blinks_reduce_eye_contrast():
    sp = SPEAKERS[4]
    out = _first_utterance(sp, lambda o: o["eye_open"].min() < 0.2)
    eye = _luma(out["video"])[
        :,
        _rows(sp.eye_y - 0.07, sp.eye_y + 0.07, 64),
        _rows(sp.eye_spacing - sp.eye_width, sp.eye_spacing + sp.eye_width, 64),
    ]
    contrast = eye.std(axis=(1, 2))
    closed, open_ = out["eye_open"] < 0.3, out["eye_open"] > 0.95
    assert contrast[closed].mean() < 0.85 * contrast[open_].mean()
