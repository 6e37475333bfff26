"""Emotion recognition across corpora: a sequence model's w on another corpus than its training one
(evaluate.py --emotion_corpus), unsupervised fine-tuning on the target corpus from a checkpoint (config key
train.init_from), and table titles from the corpus. Two SynthAV corpora of the MDVAE setting with disjoint speakers
stand in for MEAD and RAVDESS."""

import os

import numpy as np
import pytest

from avrep.evaluation import runner
from avrep.evaluation.emotion import write_emotion_tables
from avrep.features.cache import record_meta
from avrep.tasks import load_checkpoint
from avrep.training import loop
from configs import vqdsae
from data_pipelines import registry, sources

TARGET = "synthav/mdvae_other_smoke"


@pytest.fixture(scope="module")
def target_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("target_tfds"))
    registry.prepare(TARGET, data_dir)
    return data_dir


def _dsae_audio(name: str, data_dir: str, **train):
    """DSAE-audio on log power spectra: the cheapest sequence model with a static w (no tokenizer)."""
    config = vqdsae.get_config("audio,raw,smoke")
    config.data.name, config.data.data_dir = name, data_dir
    config.data.examples_per_batch = 8  # one sequence per fake device
    config.train.update(num_steps=2, checkpoint_every=2, **train)
    return config


def test_w_on_another_corpus_and_warm_start(smoke_data_dir, target_data_dir, tmp_path, monkeypatch):
    source_run, tuned_run = str(tmp_path / "dsae_audio"), str(tmp_path / "dsae_audio_tuned")
    loop.train(_dsae_audio("synthav/mdvae_smoke", smoke_data_dir), source_run)
    # Unsupervised fine-tuning on the target corpus from the source run (its parameters only).
    logs = []
    loop.train(_dsae_audio(TARGET, target_data_dir, init_from=source_run), tuned_run, log=logs.append)
    assert any(f"parameters from {source_run}" in line for line in logs)

    # w of both runs for every utterance of the target corpus (all splits: evaluate.py --emotion_corpus).
    ev = runner.Evaluation(
        str(tmp_path / "eval"), emotion_corpus=TARGET, emotion_data_dir=target_data_dir, log=lambda _: None
    )
    for run in (source_run, tuned_run):
        runner._collect_static_latents(runner.SequenceModel(load_checkpoint(run)), run, ev)
    target = {
        r["utterance_id"] for split in ("train", "validation", "test") for r in _records(TARGET, target_data_dir, split)
    }
    assert set(ev.labels) == target and len(target) == 6 * 4
    trained_on = {r["speaker"] for r in _records("synthav/mdvae_smoke", smoke_data_dir, "train")}
    assert not trained_on & {label["speaker"] for label in ev.labels.values()}  # speakers never seen
    assert sorted(ev.representations) == ["DSAE-audio w", "DSAE-audio w [dsae_audio_tuned]"]  # told apart by run
    for vectors in ev.representations.values():
        w = np.stack([vectors[i] for i in sorted(target)])
        assert np.all(np.isfinite(w)) and np.ptp(w, axis=0).max() > 0
    assert ev.emotion_datasets == {"evaluated": {TARGET}, "trained": {"synthav/mdvae_smoke", TARGET}}
    # The table is titled from the corpora (the protocol itself is tests/test_emotion.py's; 24 utterances are too
    # few for its folds).
    titles = {}
    monkeypatch.setattr(runner, "run_emotion_evaluation", lambda *a, **kw: titles.update(kw) or ([], [], {}))
    runner._emotion_tables(ev)
    assert (titles["dataset"], titles["trained_on"]) == ("SynthAV", "SynthAV")


def _records(name: str, data_dir: str, split: str) -> list[dict]:
    """The split's records' ids and speakers, as text (``record_meta``)."""
    source = sources.open_source(name, split, data_dir)
    return [record_meta(source[i], i) for i in range(len(source))]


def test_table_titles_name_the_corpora(tmp_path):
    assert registry.title("ravdess/mdvae") == "RAVDESS" and registry.title("synthav/mdvae_smoke") == "SynthAV"
    assert registry.title("mycorpus/x") == "mycorpus"
    rows = [
        dict(setting="PI", classifier="mlr", representation="w", task="category", accuracy=0.5, f1=0.4, chance=0.125)
    ]
    paths = write_emotion_tables(str(tmp_path), rows, dataset="RAVDESS", trained_on="MEAD")
    first = open(paths["md"]).readline()
    assert first == "# Emotion recognition on RAVDESS, representations learnt on MEAD (MDVAE paper Table 4 layout)\n"
    assert "RAVDESS Acc" in open(paths["md"]).read()
    assert os.path.isfile(paths["csv"])
