"""Emotion recognition from frozen utterance-level representations ([MDVAE] Sec. 3.6, Table 4, Fig. 12).

The protocol, and the choices the paper leaves open, stated so the tables can say what they report:

* **Settings.** PD (person-dependent): one seeded random 70 / 30 split, stratified on the joint
  label of all tasks, so every task and representation is scored on the same utterances. PI
  (person-independent): 5-fold cross-validation with speaker-disjoint folds (seeded GroupKFold:
  speakers shuffled, then largest first onto the lightest fold); mean and population std over folds.
* **Classifiers.** ``mlr``: multinomial logistic regression (one linear layer + softmax, L2).
  ``mlp``: two ReLU hidden layers + softmax (sklearn ``MLPClassifier``, Adam). Both standardise
  the features with statistics of the training part only. ``ot_mlr`` (PI only, as [MDVAE] Table 4
  places it): the *same* fitted MLR, applied after unsupervised optimal-transport domain adaptation
  maps the test speakers' (standardised) features onto the training distribution.
* **Hyperparameters** (MLR ``C``; MLP hidden sizes and ``alpha``) are chosen by inner
  cross-validation (accuracy) on the training part only: speaker-disjoint inner folds in PI,
  stratified in PD. The test part is never seen by any fit.
* **Metrics.** Accuracy and **macro** F1 (unweighted mean over the classes present in the test
  part or the predictions), plus ``chance``: the majority-class rate of the test part.

Pure numpy / scikit-learn / POT: no JAX, so it runs on extracted features anywhere.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from avrep.evaluation.tables import write_csv

SETTINGS = ("PD", "PI")
CLASSIFIERS = ("mlr", "mlp", "ot_mlr")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ROW_COLUMNS = ("setting", "classifier", "representation", "task", "accuracy", "f1")
EXTRA_COLUMNS = ("accuracy_std", "f1_std", "chance", "folds", "n_test", "hyperparameters")
CURVE_COLUMNS = ("representation", "task", "fraction", "n_labels", "accuracy", "accuracy_std", "f1", "f1_std", "seeds")
_CLASSIFIER_NAMES = {"mlr": "MLR", "mlp": "MLP", "ot_mlr": "DA+MLR"}
_TASK_NAMES = {"category": "Cat", "intensity": "Int"}


@dataclass(frozen=True)
class EmotionProtocol:
    """Protocol constants; the defaults follow the paper where it says, and keep runs cheap where not.

    ``mlp_grid`` entries are ``(hidden_sizes, alpha)``. A one-value grid skips the inner CV.
    ``ot_max_samples`` caps both sides of the exact OT problem (its cost matrix is n_test x n_train);
    test samples beyond the cap are mapped with POT's out-of-sample (nearest fitted neighbour) rule.
    """

    n_folds: int = 5
    test_size: float = 0.3
    inner_folds: int = 3
    mlr_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    mlp_grid: tuple[tuple[tuple[int, ...], float], ...] = (
        ((64, 64), 1e-3),
        ((64, 64), 1e-1),
        ((256, 256), 1e-3),
        ((256, 256), 1e-1),
    )
    mlp_max_iter: int = 300
    ot_max_samples: int = 3000


# ----------------------------------------------------------------------------
# Input checks


def _check_features(name: str, features, n: int | None) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features {name!r}: expected a 2-D array [N, D] (one row per utterance), got shape {x.shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"features {name!r}: expected {n} rows (one per label/speaker), got {x.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(
            f"features {name!r}: expected finite values, got NaN/inf in {bad.size} "
            f"row(s) (first indices: {bad[:5].tolist()})"
        )
    return x


def _check_labels(labels: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    out = {}
    for task, y in labels.items():
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"labels[{task!r}]: expected a 1-D array of length {n}, got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels[{task!r}]: expected integer class ids, got dtype {y.dtype}")
        if np.unique(y).size < 2:
            raise ValueError(f"labels[{task!r}]: expected at least 2 classes, got {np.unique(y).tolist()}")
        out[task] = y
    return out


def _check_inputs(
    representations: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], speakers=None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Validates everything up front so a long run cannot fail half-way on a bad representation."""
    if not representations:
        raise ValueError("representations: expected a non-empty {name: features [N, D]} mapping")
    if not labels:
        raise ValueError("labels: expected at least one task, e.g. {'category': ..., 'intensity': ...}")
    n = len(np.asarray(next(iter(labels.values()))))
    reps = {name: _check_features(name, x, n) for name, x in representations.items()}
    y = _check_labels(labels, n)
    spk = None
    if speakers is not None:
        spk = np.asarray(speakers)
        if spk.ndim != 1 or spk.shape[0] != n:
            raise ValueError(
                f"speakers: expected a 1-D array of length {n} (one id per utterance), got shape {spk.shape}"
            )
    return reps, y, spk


def _joint_label(labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """One class id per combination of all task labels, so one PD split stratifies every task."""
    stacked = np.stack([np.asarray(v) for v in labels.values()], axis=1)
    return np.unique(stacked, axis=0, return_inverse=True)[1].reshape(-1)


# ----------------------------------------------------------------------------
# Splits


def pd_split(labels: np.ndarray, *, seed: int = 0, test_size: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train/test split, stratified on ``labels`` when every class has 2+ members.

    Returns sorted ``(train_idx, test_idx)``.
    """
    labels = np.asarray(labels)
    index = np.arange(labels.shape[0])
    stratify = labels if np.unique(labels, return_counts=True)[1].min() >= 2 else None
    train, test = train_test_split(index, test_size=test_size, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(test)


def pi_folds(speakers, n_folds: int = 5, *, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Speaker-disjoint folds: every utterance is tested exactly once, never with its speaker in training.

    Seeded GroupKFold: speakers are shuffled, then assigned largest first to the fold with the
    fewest utterances, so folds are balanced and the seed changes which speakers go together.
    """
    speakers = np.asarray(speakers)
    ids, inverse, counts = np.unique(speakers, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if ids.size < n_folds:
        raise ValueError(
            f"person-independent CV: expected at least {n_folds} speakers for {n_folds} "
            f"speaker-disjoint folds, got {ids.size}"
        )
    order = np.random.default_rng(seed).permutation(ids.size)
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of = np.empty(ids.size, dtype=int)
    load = np.zeros(n_folds, dtype=int)
    for s in order:
        k = int(np.argmin(load))
        fold_of[s] = k
        load[k] += counts[s]
    utt_fold = fold_of[inverse]
    return [(np.flatnonzero(utt_fold != k), np.flatnonzero(utt_fold == k)) for k in range(n_folds)]


def _inner_splits(
    y: np.ndarray, groups: np.ndarray | None, n_inner: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner CV folds on the training part: speaker-disjoint with groups, else stratified; [] if impossible."""
    if groups is not None:
        n_groups = np.unique(groups).size
        if n_groups >= 2:
            return pi_folds(groups, min(n_inner, n_groups), seed=seed)
    n_splits = min(n_inner, int(np.unique(y, return_counts=True)[1].min()))
    if n_splits < 2:
        return []
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(y)), y))


# ----------------------------------------------------------------------------
# Classifiers


def _fit(kind: str, x: np.ndarray, y: np.ndarray, param, seed: int, protocol: EmotionProtocol) -> Pipeline:
    """The only place a classifier sees data: standardiser + model, both fitted on ``x`` alone."""
    if kind == "mlr":
        model = LogisticRegression(C=float(param), max_iter=2000)
    elif kind == "mlp":
        hidden, alpha = param
        model = MLPClassifier(
            hidden_layer_sizes=tuple(hidden), alpha=float(alpha), max_iter=protocol.mlp_max_iter, random_state=seed
        )
    else:
        raise ValueError(f"classifier: expected 'mlr' or 'mlp' to fit, got {kind!r}")
    pipe = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(x, y)
    return pipe


def _select(kind: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int, protocol: EmotionProtocol):
    """Grid value with the best inner-CV accuracy on (x, y), which must be training data only.

    Ties go to the earlier grid value. When no inner split is possible (a class with one example),
    the grid's middle value is used.
    """
    grid = list(protocol.mlr_grid if kind == "mlr" else protocol.mlp_grid)
    if not grid:
        raise ValueError(f"{kind}_grid: expected at least one hyperparameter value")
    if len(grid) == 1:
        return grid[0]
    splits = _inner_splits(y, groups, protocol.inner_folds, seed)
    if not splits:
        return grid[len(grid) // 2]
    scores = []
    for param in grid:
        accs = [
            accuracy_score(y[va], _fit(kind, x[tr], y[tr], param, seed, protocol).predict(x[va])) for tr, va in splits
        ]
        scores.append(float(np.mean(accs)))
    return grid[int(np.argmax(scores))]


def _ot_to_train(z_test: np.ndarray, z_train: np.ndarray, *, seed: int, max_samples: int) -> np.ndarray:
    """Maps test features onto the training distribution by exact OT, without labels.

    ``ot.da.EMDTransport`` (exact earth mover's distance, Courty et al. 2017), as the paper says
    EMD and it has no regularisation to tune; Sinkhorn's entropic blur would need a reg chosen
    without test labels. The test set is the OT *source* (Xs) and the training set the target
    (Xt); ``transform(Xs)`` is the barycentric map of each test sample into the training
    distribution, where the MLR was fitted, so the classifier needs no refit.
    """
    import ot  # local: POT is only needed for DA+MLR

    rng = np.random.default_rng(seed)
    xt = z_train if len(z_train) <= max_samples else z_train[rng.choice(len(z_train), max_samples, replace=False)]
    xs = z_test if len(z_test) <= max_samples else z_test[np.sort(rng.choice(len(z_test), max_samples, replace=False))]
    transport = ot.da.EMDTransport(max_iter=10_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # POT warns when numItermax is reached
        transport.fit(Xs=xs, Xt=xt)
    if xs is z_test:
        return np.asarray(transport.transform(Xs=xs))
    return np.asarray(transport.transform(Xs=z_test))  # out-of-sample rule for the rest


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    majority = np.unique(y_true, return_counts=True)[1].max() / len(y_true)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "chance": float(majority),
    }


def _describe(kind: str, param) -> str:
    if kind == "mlr":
        return f"C={param:g}"
    hidden, alpha = param
    return f"hidden={'x'.join(map(str, hidden))},alpha={alpha:g}"


def evaluate_split(
    features: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    classifiers: Sequence[str] = CLASSIFIERS,
    seed: int = 0,
    protocol: EmotionProtocol = EmotionProtocol(),
) -> dict[str, dict]:
    """Scores each classifier on one train/test split: ``{classifier: {accuracy, f1, chance, hyperparameters}}``.

    ``groups`` (speaker ids of all rows) makes the inner hyperparameter CV speaker-disjoint (PI).
    Only ``features[train_idx]`` and ``y[train_idx]`` reach any fit or model selection.
    """
    unknown = set(classifiers) - set(CLASSIFIERS)
    if unknown:
        raise ValueError(f"classifiers: expected names from {CLASSIFIERS}, got {sorted(unknown)}")
    x_tr, y_tr, x_te, y_te = features[train_idx], y[train_idx], features[test_idx], y[test_idx]
    g_tr = None if groups is None else np.asarray(groups)[train_idx]
    out: dict[str, dict] = {}
    if "mlr" in classifiers or "ot_mlr" in classifiers:
        c = _select("mlr", x_tr, y_tr, g_tr, seed, protocol)
        model = _fit("mlr", x_tr, y_tr, c, seed, protocol)
        if "mlr" in classifiers:
            out["mlr"] = {**_scores(y_te, model.predict(x_te)), "hyperparameters": _describe("mlr", c)}
        if "ot_mlr" in classifiers:
            scaler, linear = model[:-1], model[-1]
            mapped = _ot_to_train(
                scaler.transform(x_te), scaler.transform(x_tr), seed=seed, max_samples=protocol.ot_max_samples
            )
            out["ot_mlr"] = {**_scores(y_te, linear.predict(mapped)), "hyperparameters": _describe("mlr", c)}
    if "mlp" in classifiers:
        param = _select("mlp", x_tr, y_tr, g_tr, seed, protocol)
        model = _fit("mlp", x_tr, y_tr, param, seed, protocol)
        out["mlp"] = {**_scores(y_te, model.predict(x_te)), "hyperparameters": _describe("mlp", param)}
    return {k: out[k] for k in classifiers if k in out}


# ----------------------------------------------------------------------------
# Full protocol


def _summarise(per_fold: list[dict], n_test: int) -> dict:
    acc = np.array([f["accuracy"] for f in per_fold])
    f1 = np.array([f["f1"] for f in per_fold])
    several = len(per_fold) > 1
    return {
        "accuracy": float(acc.mean()),
        "f1": float(f1.mean()),
        "accuracy_std": float(acc.std()) if several else math.nan,
        "f1_std": float(f1.std()) if several else math.nan,
        "chance": float(np.mean([f["chance"] for f in per_fold])),
        "folds": len(per_fold),
        "n_test": n_test,
        "hyperparameters": ";".join(f["hyperparameters"] for f in per_fold),
    }


def evaluate_emotion(
    representations: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    speakers,
    *,
    seed: int = 0,
    settings: Sequence[str] = SETTINGS,
    classifiers: Sequence[str] = CLASSIFIERS,
    protocol: EmotionProtocol = EmotionProtocol(),
) -> list[dict]:
    """[MDVAE] Table 4: every (setting, classifier, representation, task), on splits shared by all of them.

    Returns rows with the keys of ``ROW_COLUMNS`` then ``EXTRA_COLUMNS``; accuracy and (macro) F1
    are fractions in [0, 1], PI values are the mean over folds (``*_std``: population std; NaN for PD).
    ``ot_mlr`` is run in PI only (our reading of [MDVAE] Table 4) and skipped in PD.
    """
    reps, y, spk = _check_inputs(representations, labels, speakers)
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise ValueError(f"settings: expected names from {SETTINGS}, got {bad}")
    bad = [c for c in classifiers if c not in CLASSIFIERS]
    if bad:
        raise ValueError(f"classifiers: expected names from {CLASSIFIERS}, got {bad}")
    if "PI" in settings and spk is None:
        raise ValueError("speakers: expected speaker ids for the person-independent setting, got None")
    splits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    if "PD" in settings:
        splits["PD"] = [pd_split(_joint_label(y), seed=seed, test_size=protocol.test_size)]
    if "PI" in settings:
        splits["PI"] = pi_folds(spk, protocol.n_folds, seed=seed)
    rows = []
    for setting in settings:
        active = [c for c in classifiers if not (setting == "PD" and c == "ot_mlr")]
        if not active:
            continue
        groups = spk if setting == "PI" else None
        for name, x in reps.items():
            for task, labels_t in y.items():
                per_fold = [
                    evaluate_split(x, labels_t, tr, te, groups=groups, classifiers=active, seed=seed, protocol=protocol)
                    for tr, te in splits[setting]
                ]
                n_test = sum(len(te) for _, te in splits[setting])
                for clf in active:
                    rows.append(
                        {
                            "setting": setting,
                            "classifier": clf,
                            "representation": name,
                            "task": task,
                            **_summarise([fold[clf] for fold in per_fold], n_test),
                        }
                    )
    order = {(s, c): i for i, (s, c) in enumerate((s, c) for s in settings for c in classifiers)}
    return sorted(rows, key=lambda r: order[(r["setting"], r["classifier"])])  # stable: keeps rep/task order


def _few_label_subset(y_train: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Stratified subsample: round(fraction * class count) per class, at least one per class."""
    picked = []
    for c in np.unique(y_train):
        members = np.flatnonzero(y_train == c)
        k = min(len(members), max(1, int(round(fraction * len(members)))))
        picked.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(picked))


def few_label_curve(
    representations: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    *,
    task: str = "category",
    fractions: Sequence[float] = FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    seed: int = 0,
    protocol: EmotionProtocol = EmotionProtocol(),
) -> list[dict]:
    """[MDVAE] Fig. 12: PD MLR accuracy vs the fraction of training labels used, averaged over ``seeds``.

    Uses the same PD split as :func:`evaluate_emotion` with the same ``seed`` and ``labels``; only
    the training part is subsampled (stratified), the test part stays whole. The MLR's C is chosen
    by inner CV on the subsample itself (middle grid value when a class has a single example).
    """
    reps, y, _ = _check_inputs(representations, labels)
    if task not in y:
        raise ValueError(f"task: expected one of {sorted(y)}, got {task!r}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"fractions: expected values in (0, 1], got {bad}")
    train, test = pd_split(_joint_label(y), seed=seed, test_size=protocol.test_size)
    target = y[task]
    curve = []
    for name, x in reps.items():
        for fraction in fractions:
            per_seed, n_labels = [], 0
            for s in seeds:
                sub = train[_few_label_subset(target[train], fraction, np.random.default_rng(s))]
                n_labels = len(sub)
                per_seed.append(
                    evaluate_split(x, target, sub, test, classifiers=("mlr",), seed=s, protocol=protocol)["mlr"]
                )
            acc = np.array([p["accuracy"] for p in per_seed])
            f1 = np.array([p["f1"] for p in per_seed])
            curve.append(
                {
                    "representation": name,
                    "task": task,
                    "fraction": float(fraction),
                    "n_labels": n_labels,
                    "accuracy": float(acc.mean()),
                    "accuracy_std": float(acc.std()),
                    "f1": float(f1.mean()),
                    "f1_std": float(f1.std()),
                    "seeds": len(per_seed),
                }
            )
    return curve


# ----------------------------------------------------------------------------
# Output


def _percent(row: Mapping, metric: str) -> str:
    text = f"{100 * row[metric]:.1f}"
    std = row.get(f"{metric}_std", math.nan)
    return text if std is None or math.isnan(std) else f"{text} ± {100 * std:.1f}"


def _table4_markdown(rows: Sequence[Mapping], dataset: str, trained_on: str | None = None) -> str:
    """[MDVAE] Table 4 layout: one line per (setting, classifier, representation), tasks side by side; the title
    names the corpus evaluated on, and the one the representations were learnt on where it differs."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    keys = list(dict.fromkeys((r["setting"], r["classifier"], r["representation"]) for r in rows))
    cell = {(r["setting"], r["classifier"], r["representation"], r["task"]): r for r in rows}
    best = {}  # (setting, task, metric) -> best mean, bolded like the paper
    for r in rows:
        for m in ("accuracy", "f1"):
            k = (r["setting"], r["task"], m)
            best[k] = max(best.get(k, -math.inf), r[m])
    header = ["Set", "Clf", "Representation"]
    for t in tasks:
        header += [f"{_TASK_NAMES.get(t, t)} {dataset} Acc", f"{_TASK_NAMES.get(t, t)} {dataset} F1"]
    lines = [
        f"# Emotion recognition on {dataset}"
        + (f", representations learnt on {trained_on}" if trained_on and trained_on != dataset else "")
        + " (MDVAE paper Table 4 layout)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for setting, clf, rep in keys:
        cells = [setting, _CLASSIFIER_NAMES.get(clf, clf), rep]
        for t in tasks:
            r = cell.get((setting, clf, rep, t))
            for m in ("accuracy", "f1"):
                if r is None:
                    cells.append("–")
                    continue
                text = _percent(r, m)
                cells.append(f"**{text}**" if r[m] == best[(setting, t, m)] else text)
        lines.append("| " + " | ".join(cells) + " |")
    for setting in dict.fromkeys(s for s, _, _ in keys):
        cells = [setting, "–", "majority class (chance)"]
        for t in tasks:
            chance = [r["chance"] for r in rows if r["setting"] == setting and r["task"] == t]
            cells += [f"{100 * chance[0]:.1f}" if chance else "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracy and F1 in %. F1 is the **macro** F1 (unweighted mean over classes). "
        "PD: one seeded random 70/30 split stratified on the joint labels. "
        "PI: 5-fold speaker-disjoint cross-validation, mean ± population std over folds. "
        "Features standardised with training statistics; hyperparameters (MLR C, MLP hidden sizes/alpha) "
        "chosen by inner CV on the training part (speaker-disjoint in PI). "
        "DA+MLR: exact OT (POT EMDTransport) maps the test features onto the training distribution, "
        "then the same MLR. Chance: majority-class rate of the test part. Bold: best per setting.",
    ]
    return "\n".join(lines) + "\n"


def _plot_curve(path: str, curve: Sequence[Mapping]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in dict.fromkeys(c["representation"] for c in curve):
        pts = sorted((c for c in curve if c["representation"] == name), key=lambda c: c["fraction"])
        frac = np.array([p["fraction"] for p in pts]) * 100
        acc = np.array([p["accuracy"] for p in pts]) * 100
        std = np.array([p["accuracy_std"] for p in pts]) * 100
        ax.plot(frac, acc, marker="o", label=name)
        ax.fill_between(frac, acc - std, acc + std, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training data (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"PD, MLR, {curve[0]['task'] if curve else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_emotion_tables(
    out_dir: str,
    rows: Sequence[Mapping],
    curve: Sequence[Mapping] | None = None,
    *,
    dataset: str = "MEAD",
    name: str = "emotion",
    trained_on: str | None = None,
) -> dict[str, str]:
    """Writes ``{name}.csv`` / ``{name}.md`` ([MDVAE] Table 4) and, with a curve, ``{name}_few_label.csv`` / ``.png``.

    The CSV starts with exactly ``setting, classifier, representation, task, accuracy, f1``
    (fractions in [0, 1]); extra columns follow. Returns ``{kind: path}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, f"{name}.csv"), "md": os.path.join(out_dir, f"{name}.md")}
    write_csv(paths["csv"], rows, ROW_COLUMNS + EXTRA_COLUMNS)
    with open(paths["md"], "w") as f:
        f.write(_table4_markdown(rows, dataset, trained_on))
    if curve:
        paths["curve_csv"] = os.path.join(out_dir, f"{name}_few_label.csv")
        paths["curve_png"] = os.path.join(out_dir, f"{name}_few_label.png")
        write_csv(paths["curve_csv"], curve, CURVE_COLUMNS)
        _plot_curve(paths["curve_png"], curve)
    return paths


def run_emotion_evaluation(
    out_dir: str,
    representations: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    speakers,
    *,
    seed: int = 0,
    settings: Sequence[str] = SETTINGS,
    classifiers: Sequence[str] = CLASSIFIERS,
    fractions: Sequence[float] = FRACTIONS,
    curve_task: str = "category",
    curve_seeds: Sequence[int] = (0, 1, 2),
    dataset: str = "MEAD",
    trained_on: str | None = None,
    protocol: EmotionProtocol = EmotionProtocol(),
) -> tuple[list[dict], list[dict], dict]:
    """[MDVAE] Table 4 rows + Fig. 12 curve, written to ``out_dir``; returns ``(rows, curve, paths)``.

    Pass ``fractions=()`` to skip the curve (e.g. when ``curve_task`` is not among the labels).
    """
    rows = evaluate_emotion(
        representations, labels, speakers, seed=seed, settings=settings, classifiers=classifiers, protocol=protocol
    )
    curve = (
        few_label_curve(
            representations,
            labels,
            task=curve_task,
            fractions=fractions,
            seeds=curve_seeds,
            seed=seed,
            protocol=protocol,
        )
        if fractions
        else []
    )
    return rows, curve, write_emotion_tables(out_dir, rows, curve, dataset=dataset, trained_on=trained_on)
