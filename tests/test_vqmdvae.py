"""VQ-MDVAE stage 2: features from the frozen tokenizers, a few training steps, bad configs."""
import numpy as np
import pytest

from avrep import load_checkpoint
from avrep.training import loop
from avrep.training.tasks import build_task
from avrep.training.tasks.mdvae import channel_major
from configs import vqmdvae, vqvae_audio, vqvae_visual
from data_pipelines import pipelines


def test_channel_major_is_pytorchs_flatten_order():
    audio = np.random.default_rng(0).standard_normal((2, 64, 8)).astype(np.float32)    # [N, position, C]
    visual = np.random.default_rng(1).standard_normal((2, 8, 8, 32)).astype(np.float32)  # [N, H, W, C]
    flat_a, flat_v = np.asarray(channel_major(audio)), np.asarray(channel_major(visual))
    assert flat_a.shape == (2, 512) and flat_v.shape == (2, 2048)
    assert flat_a[1, 3 * 64 + 10] == audio[1, 10, 3]               # (C, 64) flattened
    assert flat_v[1, 5 * 64 + 2 * 8 + 7] == visual[1, 2, 7, 5]     # (C, H, W) flattened


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
    task = build_task(config)
    batch = next(pipelines.training_iterator(pipelines.open_source(config.data.name, "train", smoke_data_dir),
                                             task.pipeline, task.framing, seed=0))
    x_audio, x_visual = (np.asarray(x) for x in task.features(batch))
    assert x_audio.shape == (8, 30, 512) and x_visual.shape == (8, 30, 2048)
    # Frame 7 of sequence 3 is the tokenizer's z_e of that frame, channel-major.
    visual = load_checkpoint(tokenizers["visual"])
    z_v = visual.module.apply(visual.variables, batch["video"][3, 7:8].astype(np.float32) / 255 - 0.5,
                              method="encode")
    np.testing.assert_allclose(x_visual[3, 7], np.asarray(z_v)[0].transpose(2, 0, 1).reshape(-1), rtol=1e-4,
                               atol=1e-5)

    last = loop.train(config, str(tmp_path / "vqmdvae"))
    assert np.isfinite(last["loss"]) and last["step"] == 8
    assert {"recon_audio", "recon_visual", "kl_w", "kl_z_av", "kl_z_a", "kl_z_v"} <= set(last)
    model = load_checkpoint(tmp_path / "vqmdvae")
    out = model.apply_fn(model.variables, x_audio[:2], x_visual[:2])
    assert out["recon"]["visual"].shape == (2, 30, 2048)
    np.testing.assert_array_equal(out["latents"]["w"]["sample"], out["latents"]["w"]["mean"])  # inference


@pytest.mark.parametrize("key, value, message", [
    ("tokenizers.audio", "", "tokenizers.audio is empty"),
    ("tokenizers.visual", "AUDIO", r"tokenizers.visual=.* is a vqvae/audio run; expected a visual VQ-VAE"),
    ("loss.normalization", "mean", "loss.normalization must be one of"),
    ("model.dim_q", 3, r"mdvae config \(config key model\): unknown key\(s\) \['dim_q'\]"),
])
def test_bad_stage2_config_is_named(smoke_data_dir, tokenizers, key, value, message):
    config = _config(smoke_data_dir, tokenizers)
    group, field = key.split(".")
    config[group][field] = tokenizers["audio"] if value == "AUDIO" else value
    with pytest.raises(ValueError, match=message):
        build_task(config)
