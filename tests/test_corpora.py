"""Real-corpus builders: dummy trees in each corpus's own layout (SynthAV media + broken files), built
end to end; face detection on a real photograph; Beam on the DirectRunner; one training step."""

import json
import os
import re

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import faces, media, pipelines, registry, sources
from data_pipelines.build import build
from data_pipelines.corpora.base import MANIFEST
from data_pipelines.synthav.media_files import write_clip

# A truncated file fails at whichever stage the cut reaches, each with its own reason.
TRUNCATED = (
    r"^truncated: decoded|cannot open|no (audio|video) track|cannot be decoded|has no (samples|frames)|too short"
)
# A file cut at 75 % (a copy that stopped early): FLV, AVI and WAV still open and decode, so the decoded length is
# compared with the one the container declares (for WAV and AVI, the header's own sizes).
CUT = r"^truncated: decoded [01]\.\d\d of 1\.[23]\d s"
CORRUPT = r"^cannot open media file \(InvalidDataError"  # header bytes scrambled
# corpus -> (config, [(relative path, kind, speaker, separate audio path or None)], {relative path: reason})
MEAD_GOOD = [
    (f"{s}/video/front/{e}/{lv}/{n}.mp4", "av", i, f"{s}/audio/{e}/{lv}/{n}.m4a")
    for i, s in enumerate(["M003", "W009", "M005"])
    for e, lv, n in [("angry", "level_1", "001"), ("happy", "level_2", "002")]
]
TREES = {
    "mead": (
        "mdvae",
        30,
        MEAD_GOOD
        + [
            ("M003/video/front/sad/level_3/003.mp4", "truncated", 0, None),
            ("W009/video/front/fear/level_1/003.mp4", "no_face", 1, None),
            ("M005/video/front/neutral/level_1/004.mp4", "short", 2, None),
            ("M005/video/front/sad/level_1/005.mp4", "video_only", 2, None),
            ("M003/video/front/angry/level_9/001.mp4", "av", 0, None),
            ("W009/video/front/happy/level_1/006.mp4", "silent", 1, "W009/audio/happy/level_1/006.m4a"),
        ],
        {
            "M003/video/front/sad/level_3/003.mp4": TRUNCATED,
            "W009/video/front/fear/level_1/003.mp4": "no face",
            "M005/video/front/neutral/level_1/004.mp4": "too short",
            "M005/video/front/sad/level_1/005.mp4": "no audio",
            "M003/video/front/angry/level_9/001.mp4": "bad name",
            "W009/audio/happy/level_1/006.m4a": "audio is silent",
        },
    ),
    "ravdess": (
        "mdvae",
        30,
        [
            (f"Actor_{a:02d}/01-01-{e}-{i}-01-01-{a:02d}.mp4", "av", a, None)
            for a in (1, 2, 3)
            for e, i in [("05", "01"), ("03", "02")]
        ]
        + [
            ("Actor_01/02-01-05-01-01-01-01.mp4", "video_only", 1, None),
            ("Actor_01/01-02-05-01-01-01-01.mp4", "av", 1, None),
            ("Actor_02/01-01-05-01-01-01-07.mp4", "av", 2, None),
            ("Actor_03/01-01-04-01-01-02-03.mp4", "no_face", 3, None),
            ("Actor_01/01-01-09-01-01-01-01.mp4", "av", 1, None),  # mislabelled: RAVDESS has no emotion 09
            ("Actor_02/01-01-04-02-02-01-02.mp4", "corrupt", 2, None),
            ("Actor_03/01-01-06-01-01-01-03.mp4", "silent", 3, None),
        ],
        {
            "Actor_01/02-01-05-01-01-01-01.mp4": "not audiovisual",
            "Actor_01/01-02-05-01-01-01-01.mp4": "not speech",
            "Actor_02/01-01-05-01-01-01-07.mp4": "bad name",
            "Actor_03/01-01-04-01-01-02-03.mp4": "no face",
            "Actor_01/01-01-09-01-01-01-01.mp4": "bad name",
            "Actor_02/01-01-04-02-02-01-02.mp4": CORRUPT,
            "Actor_03/01-01-06-01-01-01-03.mp4": "audio is silent",
        },
    ),
    "cremad": (
        "mdvae",
        30,
        [
            (f"VideoFlash/{a}_{c}.flv", "av", a - 1000, f"AudioWAV/{a}_{c}.wav" if a < 1003 else None)
            for a in (1001, 1002, 1003)
            for c in ("DFA_ANG_XX", "IEO_HAP_HI")
        ]
        + [
            ("VideoFlash/1001_XYZ_ANG_XX.flv", "av", 1, None),
            ("VideoFlash/1002_TIE_SAD_LO.flv", "truncated", 2, None),
            ("VideoFlash/1003_IOM_NEU_XX.flv", "short", 3, None),
            ("VideoFlash/1003_TAI_FEA_XX.flv", "cut", 3, None),
            ("VideoFlash/1001_IWW_SAD_LO.flv", "cut_audio", 1, "AudioWAV/1001_IWW_SAD_LO.wav"),
            ("VideoFlash/1002_ITS_JOY_XX.flv", "av", 2, None),  # mislabelled: no such emotion code
        ],
        {
            "VideoFlash/1001_XYZ_ANG_XX.flv": "bad name",
            "VideoFlash/1002_TIE_SAD_LO.flv": TRUNCATED,
            "VideoFlash/1003_IOM_NEU_XX.flv": "too short",
            "VideoFlash/1003_TAI_FEA_XX.flv": CUT,
            "AudioWAV/1001_IWW_SAD_LO.wav": CUT,  # the separate audio file is the one named
            "VideoFlash/1002_ITS_JOY_XX.flv": "bad name",
        },
    ),
    "enterface05": (
        "mdvae",
        25,
        [
            (f"subject {s}/{e}/sentence {k}/s{s}_{c}_{k}.avi", "av", s, None)
            for s in (1, 2, 3)
            for e, c, k in [("anger", "an", 1), ("happiness", "ha", 2)]
        ]
        + [
            ("subject 2/fear/sentence 1/s2_fe_1.avi", "truncated", 2, None),
            ("subject 3/fear/sentence 1/s3_xx_1.avi", "av", 3, None),
            ("subject 1/sadness/sentence 1/s1_sa_1.avi", "cut", 1, None),
        ],
        {
            "subject 2/fear/sentence 1/s2_fe_1.avi": TRUNCATED,
            "subject 3/fear/sentence 1/s3_xx_1.avi": "bad name",
            "subject 1/sadness/sentence 1/s1_sa_1.avi": CUT,
        },
    ),
    "emodb": (
        "audio",
        30,
        [
            (f"wav/{n}.wav", "audio", i, None)
            for i, n in enumerate(["03a01Fa", "03b02Wb", "08a02Wb", "09b01Ta", "10a01Na"])
        ]
        + [
            ("wav/03a01Xa.wav", "audio", 0, None),
            ("wav/09a05Fa.wav", "short", 3, None),
            ("wav/10a02Tc.wav", "truncated", 4, None),
            ("wav/08b01La.wav", "cut", 1, None),
            ("wav/10b02Ea.wav", "corrupt", 4, None),
            ("wav/03b01Ta.wav", "silent", 0, None),
            ("wav/02a01Fa.wav", "audio", 0, None),  # mislabelled: speaker 02 is not in EmoDB
        ],
        {
            "wav/03a01Xa.wav": "bad name",
            "wav/09a05Fa.wav": "too short",
            "wav/10a02Tc.wav": TRUNCATED,
            "wav/08b01La.wav": CUT,
            "wav/10b02Ea.wav": CORRUPT,
            "wav/03b01Ta.wav": "audio is silent",
            "wav/02a01Fa.wav": "bad name",
        },
    ),
    "voxceleb2": (
        "mdvae",
        25,
        [
            (f"{sub}/mp4/{spk}/{yt}/0000{n}.mp4", "av", i, None)
            for i, (sub, spk, yt) in enumerate(
                [
                    ("dev", "id00012", "21Uxsk56VDQ"),
                    ("dev", "id00013", "abcdefghijk"),
                    ("test", "id00017", "01dfn2spqyE"),
                ]
            )
            for n in (1, 2)
        ]
        + [
            ("dev/mp4/id00012/21Uxsk56VDQ/00003.mp4", "truncated", 0, None),
            ("dev/mp4/id00013/abcdefghijk/clip.mp4", "av", 1, None),
        ],
        {"dev/mp4/id00012/21Uxsk56VDQ/00003.mp4": TRUNCATED, "dev/mp4/id00013/abcdefghijk/clip.mp4": "bad name"},
    ),
}
IEMOCAP_LABELS = {
    "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt": [
        ("Ses01F_impro01_F000", "neu"),
        ("Ses01F_impro01_M000", "ang"),
        ("Ses01F_impro01_F001", "fru"),
    ],
    "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt": [
        ("Ses02M_script01_1_F000", "exc"),
        ("Ses02M_script01_1_M000", "sad"),
    ],
}
TREES["iemocap"] = (
    "audio",
    30,
    [
        (f"Session{u[4]}/sentences/wav/{u[:-5]}/{u}.wav", "audio", i, None)
        for i, u in enumerate(
            [
                "Ses01F_impro01_F000",
                "Ses01F_impro01_M000",
                "Ses01F_impro01_F001",
                "Ses01F_impro01_M001",
                "Ses02M_script01_1_F000",
                "Ses02M_script01_1_M000",
            ]
        )
    ],
    {
        "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav": "outside the 4 classes",
        "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav": "no label",
    },
)


def _make_tree(root, corpus):
    _, fps, files, _ = TREES[corpus]
    for rel, kind, speaker, audio_rel in files:
        write_clip(
            os.path.join(root, rel), speaker, fps, kind, audio_path=os.path.join(root, audio_rel) if audio_rel else None
        )
    if corpus == "iemocap":
        for rel, rows in IEMOCAP_LABELS.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.writelines(f"[1.0 - 2.3]\t{u}\t{lab}\t[2.5, 2.5, 2.5]\n" for u, lab in rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds every corpus once: corpus -> (data_dir, dataset dir)."""
    cache = {}

    def get(corpus):
        if corpus not in cache:
            root = str(tmp_path_factory.mktemp(corpus))
            _make_tree(root, corpus)
            data_dir = str(tmp_path_factory.mktemp(f"{corpus}_tfds"))
            cache[corpus] = (data_dir, build(corpus, TREES[corpus][0], root, data_dir, num_workers=1), root)
        return cache[corpus]

    return get


def test_haar_detector_finds_the_face_in_a_photograph():
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()  # 512x512; Eileen Collins' face spans about rows 70-170, cols 180-270
    box = faces.detect(image)
    assert box is not None
    x, y, w, h = box
    assert x < 200 and x + w > 255 and y < 90 and y + h > 150  # the box holds eyes (row ~110) to mouth (~150)
    assert 70 < w < 160  # a face, not the whole image
    track = faces.track(np.repeat(image[None], 4, axis=0), 25.0, faces.FaceOptions())
    crops = faces.crop(np.repeat(image[None], 4, axis=0), track, 96)
    assert crops.shape == (4, 96, 96, 3)
    assert faces.detect(np.full((240, 320, 3), 128, np.uint8)) is None


def test_media_decoding_resamples_audio_and_converts_frame_rate(tmp_path):
    frames = np.zeros((30, 48, 64, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(30)[:, None, None] * 8  # frame index in the red channel
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)).astype(np.int16)
    media.write_media(str(tmp_path / "a.avi"), frames, 30, None)
    media.write_media(str(tmp_path / "t.wav"), audio=tone, sample_rate=44100)
    wav = media.decode_audio(str(tmp_path / "t.wav"))
    assert abs(wav.size - 16000) <= 32
    spectrum = np.abs(np.fft.rfft(wav[:16000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins
    at25 = media.decode_video(str(tmp_path / "a.avi"), 25)
    assert len(at25) == 25
    red = at25[:, 20, 30, 0].astype(int) / 8  # frame k at 25 fps shows source frame floor(k * 30 / 25)
    np.testing.assert_array_equal(np.round(red), np.floor(np.arange(25) * 30 / 25))  # codec noise < 0.5 step
    with pytest.raises(media.MediaError, match="no video track"):
        media.decode_video(str(tmp_path / "t.wav"), 25)
    with pytest.raises(media.MediaError, match="no audio track"):
        media.decode_audio(str(tmp_path / "a.avi"))


def test_cut_wav_is_truncated_by_its_header_and_a_streamed_header_is_accepted(tmp_path):
    """FFmpeg takes a WAV's length from the bytes present; the RIFF header's data-chunk size says what was written."""
    tone = (8000 * np.sin(np.arange(64000) * 0.05)).astype(np.int16)  # 4 s at 16 kHz
    whole = str(tmp_path / "whole.wav")
    media.write_media(whole, audio=tone)
    with open(whole, "rb") as f:
        data = f.read()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(media.MediaError) as e:
        media.decode_audio(str(tmp_path / "cut.wav"))
    assert e.value.reason == "truncated: decoded 3.00 of 4.00 s"
    # A writer that did not know the length leaves 0xFFFFFFFF as the data size: nothing declared, nothing refused.
    at = data.index(b"data") + 4
    (tmp_path / "streamed.wav").write_bytes(data[:at] + b"\xff\xff\xff\xff" + data[at + 4 :])
    assert media.decode_audio(str(tmp_path / "streamed.wav")).size == 64000


@pytest.mark.parametrize("corpus", list(TREES))
def test_corpus_builds_and_records_every_skipped_file(built, corpus):
    config, _, files, broken = TREES[corpus]
    data_dir, dataset_dir, root = built(corpus)
    with open(os.path.join(dataset_dir, MANIFEST)) as f:
        manifest = json.load(f)
    skipped = {os.path.relpath(r["file"], root): r["reason"] for r in manifest["skipped"]}
    assert set(skipped) == set(broken), manifest["skipped"]
    for rel, reason in broken.items():
        assert re.search(reason, skipped[rel]), (rel, skipped[rel])
    expected = len({rel for rel, _, _, audio_rel in files if rel not in broken and audio_rel not in broken})
    assert sum(manifest["examples"].values()) == expected
    name = f"{corpus}/{config}"
    info = tfds.builder(name, data_dir=data_dir).info
    speakers = info.metadata["speakers"]
    assert {v["split"] for v in speakers.values()} <= {"train", "validation", "test"}
    seen = {}
    for split in manifest["examples"]:
        source = sources.open_source(name, split, data_dir)
        for ex in map(source.__getitem__, range(len(source))):
            speaker = ex["speaker"].decode() if isinstance(ex["speaker"], bytes) else ex["speaker"]
            assert speakers[speaker]["split"] == split
            seen[ex["utterance_id"]] = ex
            assert ex["audio"].dtype == np.int16 and np.abs(ex["audio"]).max() > 30000  # peak-normalised
            if config == "audio":
                assert ex["video"].shape[1:] == (1, 1, 3) and ex["video"].shape[0] >= 1 + ex["audio"].size // 160
            else:
                assert ex["video"].shape[1:] == (64, 64, 3)
                assert abs(ex["audio"].size / 16000 - ex["video"].shape[0] / 30) < 1 / 30  # aligned
    assert len(seen) == expected


def test_detected_crops_hold_the_rendered_face(built):
    data_dir, _, _ = built("ravdess")
    ex = sources.open_source("ravdess/mdvae", "train", data_dir)[0]
    video = ex["video"].astype(float)
    background = np.array([70, 90, 110], float)
    centre = video[:, 16:48, 16:48]  # the face (skin, eyes, mouth), not the plain background
    assert np.abs(centre - background).sum(-1).mean() > 40


def test_voxceleb2_is_built_by_beam_with_its_own_splits(built):
    from data_pipelines.corpora import builder_class

    assert builder_class("voxceleb2").BEAM  # so the build above ran as a Beam pipeline (DirectRunner)
    data_dir, dataset_dir, _ = built("voxceleb2")
    with open(os.path.join(dataset_dir, MANIFEST)) as f:  # the processing skips came out of the Beam graph
        assert {r["stage"] for r in json.load(f)["skipped"]} == {"scan", "train"}
    info = tfds.builder("voxceleb2/mdvae", data_dir=data_dir).info
    splits = {s: v["split"] for s, v in info.metadata["speakers"].items()}
    assert splits == {"id00012": "train", "id00013": "train", "id00017": "test"}  # test = VoxCeleb2's test set


@pytest.mark.parametrize("corpus,layout", [("mead", "video/front"), ("ravdess", "Actor_"), ("emodb", "wav/")])
def test_wrong_manual_dir_stops_with_the_expected_layout(tmp_path, corpus, layout):
    (tmp_path / "src" / "something").mkdir(parents=True)
    with pytest.raises(pipelines.DataError, match=layout):
        build(corpus, TREES[corpus][0], str(tmp_path / "src"), str(tmp_path / "tfds"), num_workers=1)
    with pytest.raises(pipelines.DataError, match="not a directory"):
        build(corpus, TREES[corpus][0], str(tmp_path / "missing"), str(tmp_path / "tfds"), num_workers=1)


def test_registry_says_how_to_build_a_real_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m data_pipelines.build mead --config mdvae --manual_dir"):
        registry.prepare("mead/mdvae", str(tmp_path))


def test_built_corpus_trains_one_step(built):
    from avrep.tasks import build_task
    from avrep.training import loop
    from avrep.training import mesh as mesh_lib
    from avrep.training.optimizer import make_optimizer
    from configs import vqvae_visual

    data_dir, _, _ = built("mead")
    config = vqvae_visual.get_config("smoke")
    config.data.name, config.data.data_dir = "mead/mdvae", data_dir
    registry.prepare(config.data.name, data_dir)  # found prepared: no error
    task = build_task(config)
    source = sources.open_source(config.data.name, "train", data_dir)
    batch = next(pipelines.training_iterator(source, task.pipeline, task.framing, seed=0))
    tx, schedule = make_optimizer(config.optimizer, 2)
    mesh = mesh_lib.make_mesh({"data": -1, "num_devices": 1})
    state = loop.create_state(task, tx, mesh, jax.random.key(0))
    step = loop.compile_train_step(task, tx, schedule, mesh, state)
    state, metrics = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
