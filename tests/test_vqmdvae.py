"""VQ-MDVAE stage 2: features from the frozen tokenizers, a few training steps, bad configs."""

import os

import numpy as np
import pytest

from avrep import load_checkpoint
from avrep.features.inputs import channel_major
from avrep.tasks import build_task
from avrep.training import loop
from configs import vqmdvae, vqvae_audio, vqvae_visual
from data_pipelines import pipelines, sources


def test_channel_major_is_pytorchs_flatten_order():
    audio = np.random.default_rng(0).standard_normal((2, 64, 8)).astype(np.float32)  # [N, position, C]
    visual = np.random.default_rng(1).standard_normal((2, 8, 8, 32)).astype(np.float32)  # [N, H, W, C]
    flat_a, flat_v = np.asarray(channel_major(audio)), np.asarray(channel_major(visual))
    assert flat_a.shape == (2, 512) and flat_v.shape == (2, 2048)
    assert flat_a[1, 3 * 64 + 10] == audio[1, 10, 3]  # (C, 64) flattened
    assert flat_v[1, 5 * 64 + 2 * 8 + 7] == visual[1, 2, 7, 5]  # (C, H, W) flattened


@pytest.fixture(scope="module")
def tokenizers(smoke_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    runs = {}
    for modality, module in (("audio", vqvae_audio), ("visual", vqvae_visual)):
        config = module.get_config("smoke")
        config.data.data_dir = smoke_data_dir
        runs[modality] = str(root / f"vqvae_{modality}")
        loop.train(config, runs[modality])
    return runs


def _config(smoke_data_dir, tokenizers):
    config = vqmdvae.get_config("smoke")
    config.data.data_dir = smoke_data_dir
    config.data.examples_per_batch = 8  # one sequence per fake device
    config.tokenizers.audio, config.tokenizers.visual = tokenizers["audio"], tokenizers["visual"]
    return config


def test_stage2_trains_on_frozen_tokenizer_features(smoke_data_dir, tokenizers, tmp_path):
    config = _config(smoke_data_dir, tokenizers)
    config.data.feature_cache = False  # on device, inside the step
    task = build_task(config)
    source = sources.open_source(config.data.name, "train", smoke_data_dir)
    batch = next(pipelines.training_iterator(source, task.pipeline, task.framing, seed=0))
    x = {m: np.asarray(v) for m, v in task.features(batch).items()}
    assert x["audio"].shape == (8, 30, 512) and x["visual"].shape == (8, 30, 2048)
    # Frame 7 of sequence 3 is the tokenizer's z_e of that frame, channel-major.
    visual = load_checkpoint(tokenizers["visual"])
    z_v = visual.module.apply(visual.variables, batch["video"][3, 7:8].astype(np.float32) / 255 - 0.5, method="encode")
    np.testing.assert_allclose(
        x["visual"][3, 7], np.asarray(z_v)[0].transpose(2, 0, 1).reshape(-1), rtol=1e-4, atol=1e-5
    )

    # The cache holds the same features, utterance by utterance: find this window in it.
    cache = build_task(_config(smoke_data_dir, tokenizers)).training_source(source, str(tmp_path / "run"))
    assert len(cache) == len(source)
    matches = []
    for i in range(len(cache)):
        record = cache[i]
        for t0 in range(len(record["x_audio"]) - 29):
            if np.allclose(record["x_audio"][t0 : t0 + 30], x["audio"][3], atol=1e-4):
                matches.append(i)
                np.testing.assert_allclose(record["x_visual"][t0 : t0 + 30], x["visual"][3], rtol=1e-4, atol=1e-4)
    assert len(matches) == 1

    config = _config(smoke_data_dir, tokenizers)  # cached (the default)
    last = loop.train(config, str(tmp_path / "vqmdvae"))
    assert np.isfinite(last["loss"]) and last["step"] == 8
    assert {"recon_audio", "recon_visual", "kl_w", "kl_z_av", "kl_z_a", "kl_z_v"} <= set(last)
    assert os.path.exists(tmp_path / "vqmdvae" / "feature_cache" / "train" / "index.json")
    model = load_checkpoint(tmp_path / "vqmdvae")
    out = model.apply_fn(model.variables, x["audio"][:2], x["visual"][:2])
    assert out["recon"]["visual"].shape == (2, 30, 2048)
    np.testing.assert_array_equal(out["latents"]["w"]["sample"], out["latents"]["w"]["mean"])  # inference


def test_feature_cache_skips_short_utterances_and_is_reused(smoke_data_dir, tokenizers, tmp_path):
    from avrep.features.cache import build_feature_cache
    from avrep.features.tokenizers import FrozenTokenizers

    config = _config(smoke_data_dir, tokenizers)
    source = sources.open_source(config.data.name, "test", smoke_data_dir)
    frozen = FrozenTokenizers(config)
    lengths = [
        len(build_feature_cache(str(tmp_path / "all"), frozen, source, min_frames=1)[i]["x_audio"])
        for i in range(len(source))
    ]
    cutoff = sorted(lengths)[len(lengths) // 2]  # about half the utterances are shorter
    messages = []
    cache = build_feature_cache(str(tmp_path / "c"), frozen, source, min_frames=cutoff, log=messages.append)
    assert len(cache) == sum(n >= cutoff for n in lengths) < len(source)
    assert len(cache.index["skipped"]) == sum(n < cutoff for n in lengths)
    assert "skipped" in messages[0]
    mtime = os.path.getmtime(tmp_path / "c" / "audio.bin")
    build_feature_cache(str(tmp_path / "c"), frozen, source, min_frames=cutoff)  # same fingerprint: reused
    assert os.path.getmtime(tmp_path / "c" / "audio.bin") == mtime
    for modality in ("audio", "visual"):  # the same tokenizers through symlinked run directories: reused too
        os.symlink(tokenizers[modality], tmp_path / f"link_{modality}")
        config.tokenizers[modality] = str(tmp_path / f"link_{modality}")
    os.symlink(smoke_data_dir, tmp_path / "link_data")  # and the same data through a symlinked data_dir
    linked_source = sources.open_source(config.data.name, "test", str(tmp_path / "link_data"))
    build_feature_cache(str(tmp_path / "c"), FrozenTokenizers(config), linked_source, min_frames=cutoff)
    assert os.path.getmtime(tmp_path / "c" / "audio.bin") == mtime


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("tokenizers.audio", "", "tokenizers.audio is empty"),
        ("tokenizers.visual", "AUDIO", r"tokenizers.visual=.* is a vqvae/audio run; expected a visual VQ-VAE"),
        ("loss.normalization", "mean", "loss.normalization must be one of"),
        ("loss.likelihood", "video=calibrated", r"loss.likelihood='video=calibrated': expected one of"),
        ("model.dim_q", 3, r"mdvae config \(config key model\): unknown key\(s\) \['dim_q'\]"),
    ],
)
def test_bad_stage2_config_is_named(smoke_data_dir, tokenizers, key, value, message):
    config = _config(smoke_data_dir, tokenizers)
    group, field = key.split(".")
    config[group][field] = tokenizers["audio"] if value == "AUDIO" else value
    with pytest.raises(ValueError, match=message):
        build_task(config)


# The raw-input baselines (a minute each) are opt-in: -m slow.
RAW_INPUT = pytest.mark.slow


@pytest.mark.parametrize(
    "config_arg",
    [
        "vqdsae:audio,smoke",
        pytest.param("vqdsae:visual,raw,smoke", marks=RAW_INPUT),
        "vqjointmvae:smoke",
        pytest.param("vqmdvae:raw,smoke", marks=RAW_INPUT),
    ],
)
def test_baseline_configs_train_and_reconstruct(smoke_data_dir, tokenizers, tmp_path, config_arg):
    """Every baseline of the paper's tables trains from its config and reconstructs whole test utterances."""
    import importlib

    from avrep.evaluation.sequence import SequenceModel

    module, variant = config_arg.split(":")
    config = importlib.import_module(f"configs.{module}").get_config(variant)
    config.data.data_dir = smoke_data_dir
    config.data.examples_per_batch = 8  # one sequence per fake device
    config.tokenizers.audio, config.tokenizers.visual = tokenizers["audio"], tokenizers["visual"]
    last = loop.train(config, str(tmp_path / "run"))
    assert np.isfinite(last["loss"]) and last["step"] == 8
    seq = SequenceModel(load_checkpoint(tmp_path / "run"))
    source = sources.open_source(config.data.name, "test", smoke_data_dir)
    utts, xs, _ = seq.split_features(source, limit=2)
    recon = seq.reconstruct(xs)
    for utt, r in zip(utts, recon):
        signals = seq.to_signals(r)
        n = utt["num_frames"]
        if "audio" in seq.outputs:
            assert signals["power"].shape == (n, 513) and np.all(signals["power"] >= 0)
        if "visual" in seq.outputs:
            assert signals["video"].shape == (n, 64, 64, 3)
            assert 0.0 <= signals["video"].min() and signals["video"].max() <= 1.0
    expected = {"vqdsae": {"audio"} if "audio" in variant else {"visual"}}.get(module, {"audio", "visual"})
    assert set(seq.outputs) == expected
    assert (
        seq.name
        == {
            "vqdsae:audio,smoke": "VQ-DSAE-audio",
            "vqdsae:visual,raw,smoke": "DSAE-visual",
            "vqjointmvae:smoke": "VQ-JointMVAE",
            "vqmdvae:raw,smoke": "MDVAE",
        }[config_arg]
    )


@pytest.mark.parametrize("scaling", ["standardize", pytest.param("modality", marks=pytest.mark.slow)])
def test_scaled_features_are_stored_and_undone(smoke_data_dir, tokenizers, tmp_path, scaling):
    from avrep.evaluation.sequence import SequenceModel

    config = _config(smoke_data_dir, tokenizers)
    config.features.scaling = scaling
    loop.train(config, str(tmp_path / "run"))
    model = load_checkpoint(tmp_path / "run")
    from avrep.features.cache import FeatureSource

    source = FeatureSource(str(tmp_path / "run" / "feature_cache" / "train"))
    visual = np.concatenate([source[i]["x_visual"] for i in range(len(source))])
    stats = model.variables["feature_stats"]
    np.testing.assert_allclose(stats["visual_mean"], visual.mean(0), atol=1e-4)
    # "standardize": one std per dimension; "modality": the root mean per-dimension variance, for every dimension.
    std = visual.std(0) if scaling == "standardize" else np.full(visual.shape[1], np.sqrt(visual.var(0).mean()))
    np.testing.assert_allclose(stats["visual_std"], std, rtol=1e-3, atol=1e-5)
    # Decoding returns features on the original scale: the inverse of the scaling is applied.
    seq = SequenceModel(model)
    x = source[0]
    recon = seq.reconstruct([{"audio": x["x_audio"], "visual": x["x_visual"]}])[0]
    assert abs(recon["visual"].mean() - visual.mean()) < 3 * visual.std()
    assert 0.2 < recon["visual"].std() / visual.std() < 5


def test_a_tokenizer_checkpoint_is_refused_by_the_sequence_evaluator(tokenizers):
    from avrep.evaluation.sequence import SequenceModel

    with pytest.raises(ValueError, match=r"expected a checkpoint of task .*'mdvae'.*got a 'vqvae' run"):
        SequenceModel(load_checkpoint(tokenizers["audio"]))


def test_decoding_features_equals_the_tokenizers_own_reconstruction(smoke_data_dir, tokenizers):
    """encode -> flatten channel-major -> unflatten -> quantise -> decode is each VQ-VAE's forward pass."""
    from avrep.features.inputs import audio_frames_to_power, utterance_frames, video_to_model_range
    from avrep.features.tokenizers import FrozenTokenizers

    config = _config(smoke_data_dir, tokenizers)
    frozen = FrozenTokenizers(config)
    source = sources.open_source(config.data.name, "test", smoke_data_dir)
    utt = utterance_frames(source[0], config.audio, "test record 0")
    encoders = frozen.frame_encoders()
    x_audio, x_visual = encoders["audio"](utt["windows"][:16]), encoders["visual"](utt["video"][:16])
    power, images = frozen.decode(x_audio, x_visual)
    audio, visual = load_checkpoint(tokenizers["audio"]), load_checkpoint(tokenizers["visual"])
    expected_power = audio.apply_fn(audio.variables, audio_frames_to_power(utt["windows"][:16], config.audio))["recon"]
    expected_images = visual.apply_fn(visual.variables, video_to_model_range(utt["video"][:16]))["recon"]
    np.testing.assert_allclose(np.asarray(power), np.asarray(expected_power), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(images), np.asarray(expected_images), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a whole VQ-MDVAE training and evaluation (~4 min)
def test_one_evaluation_restores_each_tokenizer_once(smoke_data_dir, tokenizers, tmp_path, monkeypatch):
    """Evaluating a VQ-MDVAE run (every table: resynthesis, transformation, denoising, emotion) restores each
    frozen tokenizer exactly once, however many tasks and feature caches it builds."""
    from avrep import runs
    from avrep.evaluation.runner import evaluate_workdir
    from avrep.features import tokenizers as tokenizers_lib

    config = _config(smoke_data_dir, tokenizers)
    run = str(tmp_path / "vqmdvae")
    loop.train(config, run)
    restores = []
    real = runs.restore_variables

    def counting(path, abstract, step=None):
        restores.append(os.path.realpath(runs.resolve_checkpoint(path)[0]).rsplit("/checkpoints", 1)[0])
        return real(path, abstract, step)

    monkeypatch.setattr(runs, "restore_variables", counting)
    monkeypatch.setattr(tokenizers_lib, "_RESTORED", type(tokenizers_lib._RESTORED)())
    evaluate_workdir(run, limit=2, griffin_lim_iters=2, swap_count=2, denoise_count=2, log=lambda _: None)
    assert os.path.exists(os.path.join(run, "eval", "denoising.csv"))  # the tokenizers were used
    counts = {path: restores.count(path) for path in set(restores)}
    assert counts == {
        os.path.realpath(tokenizers["audio"]): 1,
        os.path.realpath(tokenizers["visual"]): 1,
        os.path.realpath(run): 1,
    }
