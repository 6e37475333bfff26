"""evaluate.py --split: the tokenizers' resynthesis tables on the validation split (for choosing settings) are
scored on the validation utterances and named as such, beside the test tables and never in their place."""

import csv

import jax
import pytest
from conftest import run_python

from avrep import runs
from avrep.evaluation.runner import evaluate_workdir
from avrep.tasks import build_task
from configs import vqvae_visual
from data_pipelines.sources import open_source


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tokenizer_workdir(smoke_data_dir, tmp_path_factory):
    """A visual tokenizer run with freshly initialised weights (scoring needs no training)."""
    workdir = tmp_path_factory.mktemp("split_runs")
    config = vqvae_visual.get_config("smoke")
    config.data.data_dir = smoke_data_dir
    task = build_task(config)
    variables = jax.device_get(jax.jit(task.init_variables)(jax.random.key(0), task.dummy_batch()))
    runs.write_run(str(workdir / "vqvae_visual"), config, variables)
    return workdir, config


def test_validation_tables_score_the_validation_split_under_their_own_name(tokenizer_workdir):
    workdir, config = tokenizer_workdir
    test = evaluate_workdir(str(workdir), log=lambda _: None)
    validation = evaluate_workdir(str(workdir), log=lambda _: None, split="validation")

    assert set(validation) == {"analysis_resynthesis_visual_validation"}
    md_path, csv_path = validation["analysis_resynthesis_visual_validation"]
    assert test["analysis_resynthesis_visual"][1] != csv_path  # the test table is not overwritten
    (test_row,) = _rows(test["analysis_resynthesis_visual"][1])
    (val_row,) = _rows(csv_path)
    count = {s: len(open_source(config.data.name, s, config.data.data_dir)) for s in ("test", "validation")}
    assert int(test_row["n"]) == count["test"] and int(val_row["n"]) == count["validation"]
    assert val_row["split"] == "validation" and "split" not in test_row
    assert float(val_row["mse"]) != float(test_row["mse"])  # other speakers, other numbers
    with open(md_path) as f:
        text = f.read()
    assert "VALIDATION SPLIT (for choosing settings; not a test result)" in text
    assert "over validation utterances" in text and "test utterances" not in text
    assert (workdir / "eval" / "vqvae_visual_faces_validation.png").is_file()


def test_an_unknown_split_is_refused(tokenizer_workdir):
    workdir, _ = tokenizer_workdir
    with pytest.raises(ValueError, match=r"--split 'train': expected one of \('test', 'validation'\)"):
        evaluate_workdir(str(workdir), split="train")
    proc = run_python(["evaluate.py", "--workdir", str(workdir), "--split", "train"], check=False)
    assert proc.returncode != 0 and "--split" in proc.stderr and "test" in proc.stderr
