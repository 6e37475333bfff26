"""avrep.evaluation.emotion on synthetic utterance features with known emotion / speaker structure."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from avrep.evaluation import emotion as em

N_SPEAKERS, TAKES, DIM = 10, 2, 16
# A one-value MLP grid skips the inner CV: the MLP is exercised, the run stays fast.
FAST = em.EmotionProtocol(mlp_grid=(((32, 32), 1e-2),), mlp_max_iter=200)


def _synth(*, seed: int = 0, noise: float = 1.0, speaker_scale: float = 1.0):
    """10 speakers x 8 emotions x 3 intensities x 2 takes: emotion + intensity + speaker means + noise."""
    rng = np.random.default_rng(seed)
    emotion_means = rng.normal(size=(8, DIM))
    intensity_means = 0.8 * rng.normal(size=(3, DIM))
    speaker_offsets = speaker_scale * rng.normal(size=(N_SPEAKERS, DIM))
    spk, cat, inten = np.meshgrid(np.arange(N_SPEAKERS), np.arange(8), np.arange(3), indexing="ij")
    spk, cat, inten = (np.repeat(a.ravel(), TAKES) for a in (spk, cat, inten))
    x = emotion_means[cat] + intensity_means[inten] + speaker_offsets[spk] + noise * rng.normal(size=(spk.size, DIM))
    return x, {"category": cat, "intensity": inten}, spk


def _row(rows, setting, classifier, representation, task):
    (row,) = [
        r
        for r in rows
        if (r["setting"], r["classifier"], r["representation"], r["task"])
        == (setting, classifier, representation, task)
    ]
    return row


def test_signal_well_above_chance_and_noise_at_chance():
    x, labels, spk = _synth()
    noise = np.random.default_rng(7).normal(size=(len(spk), 64))  # 64-d: memorisable if test labels leaked
    rows = em.evaluate_emotion({"signal": x, "noise": noise}, labels, spk, classifiers=("mlr",), protocol=FAST)
    assert len(rows) == 2 * 2 * 2  # settings x representations x tasks
    for setting in ("PD", "PI"):
        cat = _row(rows, setting, "mlr", "signal", "category")
        assert cat["accuracy"] > 0.65 and cat["f1"] > 0.65, cat
        assert cat["chance"] == pytest.approx(1 / 8, abs=0.03)
        assert _row(rows, setting, "mlr", "signal", "intensity")["accuracy"] > 0.7
        assert _row(rows, setting, "mlr", "noise", "category")["accuracy"] < 0.22
        assert _row(rows, setting, "mlr", "noise", "intensity")["accuracy"] < 0.45
    assert _row(rows, "PD", "mlr", "signal", "category")["folds"] == 1
    pi = _row(rows, "PI", "mlr", "signal", "category")
    assert pi["folds"] == 5 and pi["n_test"] == len(spk) and pi["accuracy_std"] >= 0


def test_pi_folds_are_speaker_disjoint_and_cover_every_utterance_once():
    _, _, spk = _synth()
    folds = em.pi_folds(spk, 5, seed=3)
    assert len(folds) == 5
    for train, test in folds:
        assert not set(spk[train]) & set(spk[test])
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(spk)))
        assert len(set(spk[test])) == 2  # 10 equal-sized speakers -> 2 per fold
    np.testing.assert_array_equal(np.sort(np.concatenate([te for _, te in folds])), np.arange(len(spk)))
    other = em.pi_folds(spk, 5, seed=4)
    assert {frozenset(spk[te]) for _, te in folds} != {frozenset(spk[te]) for _, te in other}
    with pytest.raises(ValueError, match="at least 5 speakers"):
        em.pi_folds(spk % 4, 5)


def test_pd_split_is_seeded_stratified_70_30():
    _, labels, _ = _synth()
    y = labels["category"]
    train, test = em.pd_split(y, seed=1)
    assert not set(train) & set(test) and len(train) + len(test) == len(y)
    assert len(test) == pytest.approx(0.3 * len(y), abs=1)
    np.testing.assert_array_equal(np.bincount(y[test]), np.full(8, len(test) // 8))
    np.testing.assert_array_equal(em.pd_split(y, seed=1)[1], test)
    assert not np.array_equal(em.pd_split(y, seed=2)[1], test)


def test_model_selection_and_fitting_never_see_the_test_rows(monkeypatch):
    x, labels, spk = _synth()
    index_of = {row.tobytes(): i for i, row in enumerate(x)}
    assert len(index_of) == len(x)
    current, fits = {}, []
    real_split, real_fit = em.evaluate_split, em._fit

    def spy_split(features, y, train_idx, test_idx, **kwargs):
        current.update(train=set(train_idx.tolist()), test=set(test_idx.tolist()), pi=kwargs.get("groups") is not None)
        return real_split(features, y, train_idx, test_idx, **kwargs)

    def spy_fit(kind, xs, ys, *args):
        rows = {index_of[r.tobytes()] for r in xs}
        fits.append((kind, rows, dict(current)))
        return real_fit(kind, xs, ys, *args)

    monkeypatch.setattr(em, "evaluate_split", spy_split)
    monkeypatch.setattr(em, "_fit", spy_fit)
    protocol = em.EmotionProtocol(mlr_grid=(0.1, 1.0), mlp_grid=(((16,), 1e-3), ((16, 16), 1e-1)), mlp_max_iter=50)
    rows = em.evaluate_emotion({"signal": x}, labels, spk, classifiers=("mlr", "mlp"), protocol=protocol)
    assert len(rows) == 2 * 2 * 2
    # per task and split: 2 grid values x 3 inner folds + 1 final fit, for each of the 2 classifiers
    assert len(fits) == 2 * 2 * (1 + 5) * (2 * 3 + 1)
    for kind, fitted, ctx in fits:
        assert not fitted & ctx["test"], "a fit saw test rows"
        assert fitted <= ctx["train"]
        if ctx["pi"] and fitted != ctx["train"]:  # inner PI folds: whole training speakers left out
            left_out = ctx["train"] - fitted
            assert not set(spk[list(left_out)]) & set(spk[list(fitted)])
    assert sum(fitted == ctx["train"] for _, fitted, ctx in fits) == 2 * 2 * 6  # one final fit each


def test_ot_mlr_undoes_a_shift_of_the_unseen_speakers():
    x, labels, spk = _synth(seed=2, noise=0.6, speaker_scale=0.2)
    y = labels["category"]
    test = np.flatnonzero(spk >= 8)
    train = np.flatnonzero(spk < 8)
    shifted = x.copy()
    shifted[test] += 3.0 * np.random.default_rng(9).normal(size=DIM)  # shared offset of the unseen speakers
    out = em.evaluate_split(shifted, y, train, test, groups=spk, classifiers=("mlr", "ot_mlr"), protocol=FAST)
    assert out["ot_mlr"]["accuracy"] > out["mlr"]["accuracy"] + 0.3, out
    assert out["ot_mlr"]["accuracy"] > 0.8
    assert out["ot_mlr"]["hyperparameters"] == out["mlr"]["hyperparameters"]  # same fitted MLR
    # without the shift, DA must not hurt much
    plain = em.evaluate_split(x, y, train, test, groups=spk, classifiers=("mlr", "ot_mlr"), protocol=FAST)
    assert plain["ot_mlr"]["accuracy"] > plain["mlr"]["accuracy"] - 0.1


def test_tables_and_few_label_curve(tmp_path):
    x, labels, spk = _synth()
    rows, curve, paths = em.run_emotion_evaluation(
        str(tmp_path), {"signal": x}, labels, spk, fractions=(0.01, 0.1, 1.0), curve_seeds=(0, 1), protocol=FAST
    )
    assert [(r["setting"], r["classifier"]) for r in rows] == (
        [("PD", "mlr")] * 2 + [("PD", "mlp")] * 2 + [("PI", "mlr")] * 2 + [("PI", "mlp")] * 2 + [("PI", "ot_mlr")] * 2
    )  # DA+MLR is PI only
    assert _row(rows, "PD", "mlp", "signal", "category")["accuracy"] > 0.6
    with open(paths["csv"], newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0][:6]) == ("setting", "classifier", "representation", "task", "accuracy", "f1")
    assert len(table) == 1 + len(rows)
    assert float(table[1][4]) == pytest.approx(rows[0]["accuracy"])
    md = open(paths["md"]).read()
    assert "| Set | Clf | Representation | Cat MEAD Acc | Cat MEAD F1 | Int MEAD Acc | Int MEAD F1 |" in md
    assert "DA+MLR" in md and "macro" in md and "±" in md
    accs = [c["accuracy"] for c in curve]
    assert [c["fraction"] for c in curve] == [0.01, 0.1, 1.0]
    assert curve[0]["n_labels"] == 8  # at least one label per class
    assert accs[0] < accs[-1] - 0.2
    with open(paths["curve_csv"], newline="") as f:
        assert next(csv.reader(f))[:5] == ["representation", "task", "fraction", "n_labels", "accuracy"]
    with open(paths["curve_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _bad(case):
    x, labels, spk = _synth()
    if case == "nan":
        x[[3, 40], 5] = np.nan
    elif case == "short_features":
        x = x[:-1]
    elif case == "speakers_length":
        spk = spk[:-2]
    elif case == "float_labels":
        labels = {**labels, "category": labels["category"].astype(float)}
    elif case == "one_d":
        x = x[:, 0]
    elif case == "classifier":
        return dict(representations={"w": x}, labels=labels, speakers=spk, classifiers=("svm",))
    elif case == "few_speakers":
        spk = spk % 3
    return dict(representations={"w": x}, labels=labels, speakers=spk)


@pytest.mark.parametrize(
    "case, message",
    [
        ("nan", r"features 'w'.*NaN/inf in 2 row\(s\).*\[3, 40\]"),
        ("short_features", "features 'w': expected 480 rows"),
        ("speakers_length", "speakers: expected a 1-D array of length 480"),
        ("float_labels", r"labels\['category'\]: expected integer"),
        ("one_d", "expected a 2-D array"),
        ("classifier", "classifiers: expected names"),
        ("few_speakers", "at least 5 speakers"),
    ],
)
def test_bad_inputs_raise(case, message):
    kwargs = _bad(case)
    with pytest.raises(ValueError, match=message):
        em.evaluate_emotion(
            kwargs.pop("representations"), kwargs.pop("labels"), kwargs.pop("speakers"), protocol=FAST, **kwargs
        )
