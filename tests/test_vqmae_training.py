"""VQ-MAE training: index caches, pre-training, fine-tuning folds, warm start, frozen encoder, evaluation."""

import csv
import json
import math
import os

import jax
import numpy as np
import pytest

from avrep import load_checkpoint
from avrep.features.cache import FeatureSource
from avrep.tasks import build_task
from avrep.tasks.vqmae import fold_assignment
from avrep.training import loop
from configs import vqmae_finetune, vqmae_pipeline
from data_pipelines import pipelines, sources


def test_fold_assignment_tests_every_speaker_exactly_once():
    speakers = [f"S{i:03d}" for i in range(43)] * 3  # 43 speakers (eNTERFACE05), repeated utterances
    tested = []
    for fold in range(5):
        f = fold_assignment(speakers, 5, fold, validation_speakers=4, seed=0)
        assert len(f["validation"]) == 4
        assert not set(f["train"]) & set(f["test"]) and not set(f["validation"]) & set(f["test"])
        assert not set(f["train"]) & set(f["validation"])
        assert sorted(f["train"] + f["validation"] + f["test"]) == sorted(set(speakers))
        assert len(f["test"]) in (8, 9)  # 43 = 3 * 9 + 2 * 8: sizes differ by at most one
        tested += f["test"]
    assert sorted(tested) == sorted(set(speakers))
    with pytest.raises(ValueError, match="finetune.num_folds=50"):
        fold_assignment(speakers, 50, 0, 4, 0)


def test_feature_windows_keep_audio_aligned_and_wrap_short_utterances():
    record = {
        "x_audio": np.arange(14)[:, None] * np.ones((1, 3), int),  # 2 audio frames per video frame
        "x_visual": np.arange(7)[:, None, None] * np.ones((1, 2, 2), int),
        "emotion": 5,
    }
    window = pipelines._RandomFeatureWindow(4, ("x_audio", "x_visual"), ("emotion",), False, "test")
    out = window.random_map(record, np.random.default_rng(3))
    t0 = out["x_visual"][0, 0, 0]
    np.testing.assert_array_equal(out["x_visual"][:, 0, 0], t0 + np.arange(4))
    np.testing.assert_array_equal(out["x_audio"][:, 0], 2 * t0 + np.arange(8))
    assert out["emotion"] == 5
    wrap = pipelines._RandomFeatureWindow(10, ("x_audio", "x_visual"), (), True, "test")
    out = wrap.random_map(record, np.random.default_rng(0))
    np.testing.assert_array_equal(out["x_visual"][:, 0, 0], np.arange(10) % 7)
    np.testing.assert_array_equal(out["x_audio"][:, 0], np.arange(20) % 14)
    with pytest.raises(pipelines.DataError, match="fewer than the window of 10"):
        pipelines._RandomFeatureWindow(10, ("x_visual",), (), False, "test").random_map(
            record, np.random.default_rng(0)
        )


@pytest.fixture(scope="module")
def vqmae_workdir(tmp_path_factory):
    """The VQ-MAE pipeline on smoke configs: tokenizers, VQ-MAE-AV pre-training, 3 fine-tuning folds."""
    workdir = tmp_path_factory.mktemp("vqmae")
    for name, stage_dir, config in vqmae_pipeline.get_stages(str(workdir), "smoke"):
        loop.train(config, stage_dir)
    return workdir


def test_index_cache_holds_the_tokenizers_indices_at_both_rates(vqmae_workdir):
    cache = FeatureSource(str(vqmae_workdir / "index_cache" / "test"))
    record = cache[0]
    assert record["x_audio"].dtype == np.int16 and record["x_audio"].shape[1:] == (64,)
    assert record["x_visual"].shape[1:] == (24, 24)
    assert len(record["x_audio"]) == 2 * len(record["x_visual"])  # 50 Hz audio beside 25 fps video
    visual = load_checkpoint(vqmae_workdir / "vqvae_visual")
    # index_cache/ holds the labelled set (the tokenizers were trained on the pre-training corpus).
    source = sources.open_source("synthav/vqmae_smoke", "test", str(vqmae_workdir / "data"))
    frame = np.asarray(source[record["record"]]["video"][3:4], np.float32) / 255.0 - 0.5
    z_e = visual.module.apply(visual.variables, frame, method="encode")
    _, indices = visual.module.apply(visual.variables, z_e, method="quantize")
    np.testing.assert_array_equal(record["x_visual"][3], np.asarray(indices)[0])


def test_pretraining_logs_masked_token_accuracy_and_contrastive_loss(vqmae_workdir):
    with open(vqmae_workdir / "vqmae_av" / "metrics.jsonl") as f:
        last = json.loads(f.readlines()[-1])
    for key in ("accuracy_audio", "accuracy_visual", "ce_audio", "ce_visual", "nce"):
        assert math.isfinite(last[f"train/{key}"]), key
    assert 0.0 <= last["train/accuracy_visual"] <= 1.0
    # Dirichlet ratios: p_a + p_v = 1 on average over the batch.
    assert abs(last["train/mask_fraction_audio"] + last["train/mask_fraction_visual"] - 1.0) < 0.1


def test_fine_tuning_starts_from_the_pretrained_encoder_on_disjoint_speakers(vqmae_workdir):
    stages = {name: (d, c) for name, d, c in vqmae_pipeline.get_stages(str(vqmae_workdir), "smoke")}
    run_dir, config = stages["vqmae_av_ft1"]
    task = build_task(config)
    fresh = jax.jit(task.init_variables)(jax.random.key(0), task.dummy_batch())
    warm = task.warm_start(fresh)
    pretrained = load_checkpoint(vqmae_workdir / "vqmae_av").variables["params"]
    for a, b in zip(jax.tree.leaves(warm["params"]["backbone"]["encoder"]), jax.tree.leaves(pretrained["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "decoder" not in warm["params"]["backbone"]  # the decoder is dropped
    tested = []
    for fold in range(3):
        with open(vqmae_workdir / f"vqmae_av_ft{fold}" / "fold.json") as f:
            folds = json.load(f)
        assert not set(folds["test"]) & (set(folds["train"]) | set(folds["validation"]))
        tested += folds["test"]
    assert sorted(tested) == sorted(set(tested)) and len(tested) == 6  # the 6 smoke speakers, once each


@pytest.mark.parametrize("variant", ["", "smoke"])
def test_pipeline_pretrains_on_speakers_it_never_fine_tunes_on(variant, tmp_path):
    stages = vqmae_pipeline.get_stages(str(tmp_path), variant)
    labelled = {c.data.name for name, _, c in stages if name.startswith("vqmae_av_ft")}
    unlabelled = {c.data.name for name, _, c in stages if not name.startswith("vqmae_av_ft")}
    assert labelled == {"synthav/vqmae" + ("_smoke" if variant else "")}
    assert unlabelled == {"synthav/vqmae_pretrain" + ("_smoke" if variant else "")}  # tokenizers too
    caches = {c.data.feature_cache_dir for _, _, c in stages if "feature_cache_dir" in c.data}
    assert caches == {str(tmp_path / "index_cache"), str(tmp_path / "index_cache_pretrain")}


def test_pretraining_and_fine_tuning_caches_hold_disjoint_speakers(vqmae_workdir):
    def speakers(cache):
        return {u["speaker"] for u in FeatureSource(str(cache)).index["utterances"]}

    seen = speakers(vqmae_workdir / "index_cache_pretrain" / "train")
    labelled = set().union(*(speakers(vqmae_workdir / "index_cache" / s) for s in ("train", "validation", "test")))
    assert len(labelled) == 6 and len(seen) >= 6 and not seen & labelled


def test_linear_probe_curve_reads_each_checkpoint_and_the_initial_weights(vqmae_workdir, tmp_path):
    from avrep.evaluation import vqmae as vqmae_eval

    run = str(vqmae_workdir / "vqmae_av")
    labelled = vqmae_eval.LabelledWindows(
        run, "synthav/vqmae_smoke", str(vqmae_workdir / "data"), str(vqmae_workdir / "index_cache")
    )
    assert len(labelled.emotions) == 24 and len(set(labelled.speakers)) == 6  # every labelled utterance
    assert len(labelled.owner) == len(labelled.windows["x_visual"]) > 24  # several windows per utterance
    # Step 0 is the initial weights the run drew from its seed, not the first checkpoint's.
    first = load_checkpoint(vqmae_workdir / "vqmae_av" / "checkpoints" / "3").variables["params"]
    initial = labelled.variables(0)["params"]
    assert jax.tree.structure(initial) == jax.tree.structure(first)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(first)))
    rows = vqmae_eval.linear_probe_curve(labelled, (0, 3, 6), batch=24, log=lambda _: None)
    assert [r["step"] for r in rows] == [0, 3, 6]
    for r in rows:
        assert 0.0 <= r["probe_accuracy"] <= 100.0 and r["probe_accuracy_std"] >= 0.0
        assert 100 / 8 <= r["chance"] <= 50.0  # majority class of a test fold, 8 classes
    # The masked-token accuracy is the masking curve's, for the same masks (one batch of the first windows).
    module = labelled.task.module
    x = tuple(labelled.first[k].astype(np.int32) for k in ("x_audio", "x_visual"))
    _, accuracy = vqmae_eval._predicted_grids(module, labelled.variables(6), x, np.float32(0.5), jax.random.key(0))
    assert rows[2]["masked_accuracy_audio"] == pytest.approx(100 * float(accuracy["audio"]), abs=1e-3)
    assert rows[2]["masked_accuracy_visual"] == pytest.approx(100 * float(accuracy["visual"]), abs=1e-3)
    md = vqmae_eval.write_probe_table(str(tmp_path), rows, labelled, 0.5)
    assert open(md).read().count("\n| ") == 4  # header + 3 steps
    with pytest.raises(ValueError, match=r"no checkpoint at step\(s\) \[400\] \(kept: \[3, 6\]\)"):
        vqmae_eval.linear_probe_curve(labelled, (0, 400))


def test_frozen_encoder_gets_no_updates(vqmae_workdir, tmp_path):
    config = vqmae_finetune.get_config("frozen,smoke")
    config.finetune.pretrained = str(vqmae_workdir / "vqmae_av")
    config.data.data_dir = str(vqmae_workdir / "data")
    config.data.feature_cache_dir = str(vqmae_workdir / "index_cache")
    loop.train(config, str(tmp_path / "frozen"))
    tuned = load_checkpoint(tmp_path / "frozen").variables["params"]
    pretrained = load_checkpoint(vqmae_workdir / "vqmae_av").variables["params"]
    for a, b in zip(jax.tree.leaves(tuned["backbone"]["encoder"]), jax.tree.leaves(pretrained["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    unfrozen = load_checkpoint(vqmae_workdir / "vqmae_av_ft0").variables["params"]
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(unfrozen["backbone"]["encoder"]), jax.tree.leaves(pretrained["encoder"]))
    )


def test_fine_tuning_refuses_another_token_layout(vqmae_workdir):
    config = vqmae_finetune.get_config("smoke")
    config.finetune.pretrained = str(vqmae_workdir / "vqmae_av")
    config.data.data_dir = str(vqmae_workdir / "data")
    config.model = {"visual_patch_size": 8}
    layout = r"differs from the pre-training run .* token layout \(\['visual_patch_size'\]\)"
    with pytest.raises(ValueError, match=layout):
        build_task(config)
    config.model, config.finetune.pretrained = {}, str(vqmae_workdir / "vqvae_audio")
    with pytest.raises(ValueError, match="is a 'vqvae' run; expected a VQ-MAE pre-training run"):
        build_task(config)


def test_evaluation_writes_fold_table_and_masking_curve(vqmae_workdir):
    from avrep.evaluation.runner import evaluate_workdir

    evaluate_workdir(str(vqmae_workdir), limit=2, griffin_lim_iters=4, log=lambda _: None)
    with open(vqmae_workdir / "eval" / "emotion_finetuning.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["pretrain"], r["pooling"], r["n"]) for r in rows] == [
        ("VQ-MAE-AV (SAF-SAF)", "✓", "query2emo", "3")
    ]
    assert 0.0 <= float(rows[0]["accuracy"]) <= 100.0 and float(rows[0]["accuracy_std"]) >= 0.0
    with open(vqmae_workdir / "eval" / "emotion_finetuning_folds.csv") as f:
        folds = list(csv.DictReader(f))
    assert sorted(int(r["fold"]) for r in folds) == [0, 1, 2]
    assert all(int(r["step"]) in (3, 6) for r in folds)  # a kept checkpoint, chosen on validation
    with open(vqmae_workdir / "eval" / "reconstruction_vs_masking.csv") as f:
        curve = list(csv.DictReader(f))
    assert [r["ratio"] for r in curve] == [f"{0.1 * i:.1f}" for i in range(10)]
    assert curve[0]["accuracy_visual"] == "" or math.isnan(float(curve[0]["accuracy_visual"]))  # nothing masked
    assert float(curve[0]["psnr"]) > float(curve[-1]["psnr"])  # a barely trained model loses what it masks
    assert os.path.getsize(vqmae_workdir / "eval" / "reconstruction_vs_masking.png") > 10_000
