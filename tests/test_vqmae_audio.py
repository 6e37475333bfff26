"""The audio-only VQ-MAE path (VQ-MAE-S, [Sadok-thesis] App. C.3): its own audio clock (hop 256 at 16 kHz against
25 fps video is 2.5 frames per video frame), only the audio tokenizer loaded, audio-only caches, pre-training and
fine-tuning on an audio-only dataset, the Table C.3 configs, RAVDESS's audio-only speech files, and tokenisation with
the released VQ-MAE-S speech VQ-VAE under running or batch BatchNorm statistics (golden files; skipped when absent)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import load_fixture, parity_dir

from avrep import load_checkpoint, runs
from avrep.convert import importing
from avrep.features.cache import FeatureSource
from avrep.features.inputs import iter_utterance_features
from avrep.features.tokenizers import FrozenTokenizers
from avrep.models.vqmae import count_params
from avrep.tasks import build_task
from avrep.tasks.vqmae import audio_rate, build_model, model_fields
from avrep.training import loop
from configs import vqmae, vqmae_finetune, vqvae_audio
from data_pipelines import registry, sources

VQMAE_S_TOKENIZER = "speech_vqvae/vqmae_s_2022-12-27_21-42"
VQMAE_S_MAE = "vqmae_s/mae"  # the authors' MAE on random weights
SPEECH = "synthav/speech_smoke"  # audio only: no video field at all (6 speakers, 4 utterances each)


def test_paper_config_is_the_thesis_vq_mae_s():
    c = vqmae.get_config("audio,paper")
    assert (c.audio.sample_rate, c.audio.n_fft, c.audio.hop, c.data.frames_per_example) == (16000, 1024, 256, 200)
    m = c.model
    assert (m.kind, m.width, m.num_heads, m.encoder_depth, m.decoder_depth, m.mlp_ratio) == ("audio", 320, 4, 12, 4, 4)
    assert (m.audio_frames, m.audio_bins, m.audio_codes, m.audio_code_dim, m.mask_unit) == (200, 64, 256, 8, "frame")
    assert vqmae.get_config("audio,paper,patch").model.mask_unit == "patch"
    with pytest.raises(ValueError, match="'patch'.*needs the variant 'audio'"):
        vqmae.get_config("patch")
    # 16000 / 256 / 25 = 2.5 audio frames per video frame: refused with video, the audio clock without.
    assert audio_rate(c, ("audio",)) == 1
    with pytest.raises(ValueError, match="give 2.500 audio frames per video frame"):
        audio_rate(c, ("audio", "visual"))


def test_paper_config_has_the_authors_parameter_count():
    """The authors' MAE fixture is their repository's 6 / 4-block configuration; with that depth the paper config's
    model has exactly its parameters (the thesis's 12 encoder blocks give 19,922,752)."""
    with open(os.path.join(parity_dir(VQMAE_S_MAE), "meta.json")) as f:
        meta = json.load(f)
    config = vqmae.get_config("audio,paper")
    kind, fields = model_fields(config.model)
    x = jnp.zeros((1, config.data.frames_per_example, 64), jnp.int32)
    counts = {}
    for depth in (meta["architecture"]["config"]["encoder_layer"], 12):
        module = build_model(kind, {**fields, "encoder_depth": depth}, "test")
        shapes = jax.eval_shape(lambda: module.init({"params": jax.random.key(0), "mask": jax.random.key(1)}, x))
        counts[depth] = count_params(shapes["params"])
    assert counts == {6: meta["weights"]["parameters"], 12: 19_922_752}


def test_table_c3_fine_tuning_configs():
    expected = {"ravdess_speech": ("ravdess/audio", 8), "iemocap": ("iemocap/audio", 4), "emodb": ("emodb/audio", 7)}
    for corpus, (dataset, classes) in expected.items():
        for masking in ("frame", "patch"):
            for pooling in ("query2emo", "cls"):
                c = vqmae_finetune.get_config(f"{corpus},{masking},{pooling},paper")
                assert (c.data.name, c.finetune.num_classes, c.finetune.num_folds) == (dataset, classes, 5)
                assert (c.audio.hop, c.data.frames_per_example, c.data.examples_per_batch) == (256, 200, 16)
                assert dict(c.model) == {"kind": "audio", "mask_unit": masking} and c.finetune.pooling == pooling
    with pytest.raises(ValueError, match="VQ-MAE-S's: add 'audio'"):
        vqmae_finetune.get_config("ravdess,cls")


def _initial_run(directory, config) -> str:
    """A run holding ``config``'s initial (random) weights: a stand-in for a trained tokenizer or pre-training."""
    task = build_task(config)
    return runs.write_run(str(directory), config, jax.jit(task.init_variables)(jax.random.key(0), task.dummy_batch()))


@pytest.fixture(scope="module")
def audio_runs(tmp_path_factory):
    """One fine-tuning fold of an audio-only VQ-MAE (smoke sizes, hop 256, no visual tokenizer) on SynthAV's speech
    view, from a pre-training run (its initial weights: pre-training is the AV path's code, tested elsewhere)."""
    root = tmp_path_factory.mktemp("vqmae_s")
    data_dir = str(root / "data")
    registry.prepare(SPEECH, data_dir)
    data = dict(name=SPEECH, data_dir=data_dir, feature_cache_dir=str(root / "index_cache"))
    pretrain = vqmae.get_config("audio,smoke")
    pretrain.data.update(data)
    pretrain.audio.hop = 256  # VQ-MAE-S's STFT: 2.5 frames per video frame, impossible with video
    pretrain.tokenizers.audio = _initial_run(root / "vqvae_audio", vqvae_audio.get_config("vqmae_s,smoke"))
    _initial_run(root / "pretrain", pretrain)
    finetune = vqmae_finetune.get_config("audio,frame,cls,smoke")
    finetune.data.update(data)
    finetune.audio.hop = 256
    finetune.finetune.pretrained = str(root / "pretrain")
    finetune.train.update(num_steps=2, checkpoint_every=2, log_every=1)
    loop.train(finetune, str(root / "finetune"))
    return root, data_dir


def test_audio_only_cache_holds_audio_frames_at_their_own_rate(audio_runs):
    root, data_dir = audio_runs
    cache = FeatureSource(str(root / "index_cache" / "train"))
    assert cache.index["rates"] == {"audio": 1} and set(cache.index["fingerprint"]["tokenizers"]) == {"audio"}
    source = sources.open_source(SPEECH, "train", data_dir)
    tokenizer = load_checkpoint(root / "vqvae_audio")
    for i in range(2):
        record = cache[i]
        assert set(k for k in record if k.startswith("x_")) == {"x_audio"}
        wav = np.asarray(source[record["record"]]["audio"]).astype(np.float32) / 32768.0
        assert len(record["x_audio"]) == 1 + len(wav) // 256  # every centred STFT frame at hop 256
    # The cached indices are the tokenizer's on that utterance's power frames (peak-normalised, centred STFT).
    from avrep import audio as audio_lib

    wav = wav / np.abs(wav).max()
    power = audio_lib.power_spectrogram(jnp.asarray(wav), n_fft=1024, hop=256, window="hann", center=True)
    out = tokenizer.apply_fn(tokenizer.variables, power)
    np.testing.assert_array_equal(record["x_audio"], np.asarray(out["indices"]))


def test_audio_only_fine_tuning_runs_on_an_audio_only_dataset(audio_runs):
    root, _ = audio_runs
    with open(root / "finetune" / "metrics.jsonl") as f:
        last = json.loads(f.readlines()[-1])
    assert np.isfinite(last["train/asymmetric_loss"]) and 0.0 <= last["train/train_accuracy"] <= 1.0
    with open(root / "finetune" / "fold.json") as f:
        folds = json.load(f)
    assert len(folds["test"]) == 2 and len(folds["validation"]) == 1  # 6 speakers, 3 folds
    model = load_checkpoint(root / "finetune")
    assert model.config.model.kind == "audio" and model.task.tokenizers.modalities == ("audio",)
    assert model.task.dummy_batch()["x_audio"].shape == (2, 20, 64) and "x_visual" not in model.task.dummy_batch()
    # The [CLS] head reads an audio-only batch.
    logits = model.apply_fn(model.variables, jnp.zeros((3, 20, 64), jnp.int32))
    assert logits.shape == (3, 8)
    # A fine-tuning config naming another masking than the pre-training's is refused (a Table C.3 row mix-up).
    config = vqmae_finetune.get_config("audio,patch,smoke")
    config.audio.hop, config.finetune.pretrained = 256, str(root / "pretrain")
    with pytest.raises(ValueError, match="model.mask_unit='patch', but the pre-training run .* masked by 'frame'"):
        build_task(config)
    # Fine-tuning reads the tokens of its pre-training: its tokenizer's BatchNorm statistics option included.
    pretrain = runs.read_config(root / "pretrain")
    pretrain.tokenizers.batch_stats_mode = "batch"
    _initial_run(root / "pretrain_batch", pretrain)
    config = vqmae_finetune.get_config("audio,smoke")
    config.audio.hop, config.finetune.pretrained = 256, str(root / "pretrain_batch")
    task = build_task(config)
    assert task.tokenizers.batch_statistics and config.tokenizers.batch_stats_mode == "batch"


def test_audio_only_runs_are_evaluated_without_video(audio_runs):
    from avrep.evaluation.vqmae import FinetunedModel, reconstruction_curve

    root, _ = audio_runs
    row = FinetunedModel(load_checkpoint(root / "finetune"), str(root / "finetune")).evaluate()
    assert row["model"] == "VQ-MAE-A" and row["pooling"] == "cls" and row["test_speakers"] == 2
    assert row["test_utterances"] == 8 and 0.0 <= row["accuracy"] <= 100.0
    rows = reconstruction_curve(load_checkpoint(root / "pretrain"), str(root / "pretrain"), count=2, ratios=(0.0, 0.8))
    assert [r["ratio"] for r in rows] == ["0.0", "0.8"] and all("psnr" not in r for r in rows)
    assert np.isnan(rows[0]["accuracy_audio"]) and 0.0 <= rows[1]["accuracy_audio"] <= 100.0
    assert all(np.isfinite(r["si_sdr"]) for r in rows)


def test_ravdess_audio_config_reads_the_audio_only_speech_files(tmp_path):
    from data_pipelines.build import build
    from data_pipelines.corpora.base import MANIFEST
    from data_pipelines.synthav.media_files import write_clip

    root = tmp_path / "ravdess"
    good = [f"Actor_{a:02d}/03-01-{e}-01-01-01-{a:02d}.wav" for a in (1, 2, 3) for e in ("05", "03")]
    skipped = {
        "Actor_01/01-01-05-01-01-01-01.mp4": "not audio-only",  # audiovisual file: the vqmae config's
        "Actor_02/03-02-05-01-01-01-02.wav": "not speech",  # song
    }
    for rel in good + list(skipped):
        write_clip(str(root / rel), int(rel[6:8]), 25, "audio" if rel.endswith(".wav") else "av")
    dataset_dir = build("ravdess", "audio", str(root), str(tmp_path / "tfds"), num_workers=1)
    with open(os.path.join(dataset_dir, MANIFEST)) as f:
        manifest = json.load(f)
    reasons = {os.path.relpath(r["file"], root): r["reason"] for r in manifest["skipped"]}
    assert set(reasons) == set(skipped) and all(skipped[k] in reasons[k] for k in skipped), reasons
    assert sum(manifest["examples"].values()) == len(good)
    ex = sources.open_source("ravdess/audio", next(iter(manifest["examples"])), str(tmp_path / "tfds"))[0]
    assert ex["video"].shape[1:] == (1, 1, 3)  # placeholder frames, never read by an audio-only model


def test_tokenizers_use_the_released_speech_vqvae_with_running_or_batch_statistics(tmp_path):
    path, meta, inputs, golden = load_fixture(VQMAE_S_TOKENIZER)
    weights = os.path.join(path, "weights.npz")
    floors = meta["noise_floor_fp64"]["arrays"]
    run = importing.import_speech_vqvae(weights, tmp_path / "vqmae_s", preset="vqmae_s")
    imported = runs.read_config(run)
    # The released network is the vqmae_s preset: 2 residual layers, linear power in, BatchNorm.
    preset = vqvae_audio.get_config("vqmae_s")
    for key in ("num_codes", "code_dim", "residual_hidden", "num_residual_layers", "batch_norm", "input_transform"):
        assert imported.model[key] == preset.model[key], key
    assert imported.audio.hop == preset.audio.hop == 256
    config = vqmae.get_config("audio,paper")
    config.tokenizers.audio = run  # accepted: same STFT, and no visual tokenizer is needed
    power = jnp.asarray(inputs["speech.power"])  # 48 frames: the authors' batch
    for option, mode in (("", "eval"), ("running", "eval"), ("batch", "trainbn")):
        config.tokenizers.batch_stats_mode = option
        frozen = FrozenTokenizers(config, ("audio",))
        assert frozen.modalities == ("audio",) and frozen.batch_statistics == (option == "batch")
        indices = np.asarray(frozen.indices("audio", power))
        flips = int(np.sum(indices != golden[f"speech.{mode}.indices"]))
        assert flips <= floors[f"speech.{mode}.indices"]["n_different_fp32_vs_fp64"], (option, flips)
    assert not np.array_equal(golden["speech.eval.indices"], golden["speech.trainbn.indices"])  # the option matters
    config.tokenizers.batch_stats_mode = "train"
    with pytest.raises(ValueError, match=r"tokenizers.batch_stats_mode='train': expected '' .* \('running', 'batch'\)"):
        FrozenTokenizers(config, ("audio",))
    # Batch statistics: the cache encodes each utterance alone, unpadded, so its tokens are those of its own frames.
    config.tokenizers.batch_stats_mode = "batch"
    frozen = FrozenTokenizers(config, ("audio",))
    encode = jax.jit(frozen.frame_encoders("indices")["audio"])
    rng = np.random.default_rng(0)
    utterances = [{"windows": rng.standard_normal((n, 1024)).astype(np.float32)} for n in (37, 70)]
    encoded = list(iter_utterance_features({"audio": encode}, utterances, per_utterance=True))
    for utt, out in zip(utterances, encoded):
        np.testing.assert_array_equal(out["audio"], np.asarray(encode(utt["windows"])))
    pooled = list(iter_utterance_features({"audio": encode}, utterances))  # grouped and padded: other statistics
    assert not np.array_equal(pooled[0]["audio"], encoded[0]["audio"])
