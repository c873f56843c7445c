"""Training a detector: the cell SVM, and the choices made on held-out data only.

1. ``search_alpha``: the SVM's penalty, by grouped cross-validation on the training cells
   (cell ROC-AUC).
2. ``held_out_folds``: folds whose held-out part is both other photos and another family of fill
   (or, without families, another inpainting method) when the training data has several: each
   fold's model is trained on the other photos' images of the other families, and scores its
   photos' real images and the family it never saw. The aggregation ``k`` and the decision
   threshold are chosen on those scores, so they hold on a kind of fill the detector has not
   seen, not only in distribution.
3. ``choose``: ``k`` maximising the mean ROC-AUC over the held-out conditions; the threshold
   maximising their mean balanced accuracy (with the copy rule's verdicts, see ``copyrule``);
   Platt scaling of the pooled held-out scores.

Every split is grouped by source photo: an image and every inpainting of it are on one side.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from deepfake.detector.model import (
    _portable_warning_filters,
    cell_svm,
    linear_form,
    platt_calibration,
    top_k_mean,
    validation_threshold,
)
from deepfake.detector.settings import SVMConfig


@dataclass(frozen=True)
class LinearModel:
    """A fitted cell SVM as weights and bias (see ``linear_form``)."""

    weights: np.ndarray
    bias: float


@dataclass(frozen=True)
class Fold:
    """A held-out condition: the images ``held_out`` (positions in the training frame) are
    scored by ``model``, trained without them, without their photos and without ``left_out``
    (a family or a method)."""

    name: str
    left_out: str | None
    held_out: np.ndarray
    train: np.ndarray
    model: LinearModel | None = None


def cell_labels(coverage: np.ndarray) -> np.ndarray:
    """1 for a sampled cell inside an inpainted region, 0 for a clean one."""
    return (coverage >= 0.5).astype(int)


def _fit(X: np.ndarray, y: np.ndarray, alpha: float, seed: int, epochs: int) -> LinearModel:
    return LinearModel(*linear_form(cell_svm(alpha, seed, epochs).fit(X, y)))


def _fit_rows(
    X: np.ndarray, y: np.ndarray, rows: np.ndarray, alpha: float, seed: int, epochs: int
) -> LinearModel:
    return _fit(X[rows], y[rows], alpha, seed, epochs)


@contextlib.contextmanager
def _shared(X: np.ndarray, parallel: bool) -> Iterator[np.ndarray]:
    """``X`` as a read-only memory map of one temporary file, for parallel workers: each job
    then reaches it by the file's name, where a plain array would be hashed and written out
    again for every job."""
    if not parallel or X.nbytes < 2**20:
        yield X
        return
    with tempfile.TemporaryDirectory(prefix="deepfake-cells-") as folder:
        path = f"{folder}/cells.npy"
        np.save(path, X)
        yield np.load(path, mmap_mode="r")


def fit_many(
    X: np.ndarray, y: np.ndarray, subsets: Iterable[np.ndarray], alpha: float, cfg: SVMConfig
) -> list[LinearModel]:
    """One cell SVM per subset of the rows of (X, y) (each a boolean mask or indices), fitted
    in parallel; the jobs share X instead of each carrying a copy of its rows."""
    subsets = list(subsets)
    with _portable_warning_filters(), _shared(X, cfg.n_jobs != 1 and len(subsets) > 1) as cells:
        return Parallel(n_jobs=cfg.n_jobs)(
            delayed(_fit_rows)(cells, y, rows, alpha, cfg.seed, cfg.epochs) for rows in subsets
        )


def search_alpha(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: SVMConfig
) -> tuple[float, dict[float, float]]:
    """The alpha with the best mean cell ROC-AUC over grouped folds of the training cells."""
    folds = min(cfg.cv_folds, len(np.unique(groups)))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 source groups in the training split")
    splits = list(
        GroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed).split(X, y, groups)
    )
    results = {}
    for alpha in cfg.alpha:
        models = fit_many(X, y, [tr for tr, _ in splits], alpha, cfg)
        pairs = zip(splits, models, strict=True)
        aucs = [roc_auc_score(y[te], X[te] @ m.weights + m.bias) for (_, te), m in pairs
                if len(np.unique(y[te])) == 2]  # fmt: skip
        results[float(alpha)] = float(np.mean(aucs)) if aucs else float("nan")
    best = max(results, key=lambda a: (np.nan_to_num(results[a], nan=-1), a))
    return best, results


def crossing_column(frame: pd.DataFrame) -> str | None:
    """What held-out folds cross photos with: ``family`` when the fakes come in several,
    else ``method`` when they come in several, else nothing."""
    fakes = frame[frame["label"] == 1]
    for column in ("family", "method"):
        if column in frame and fakes[column].nunique() >= 2:
            return column
    return None


def held_out_folds(frame: pd.DataFrame, cfg: SVMConfig, cross: bool = True) -> list[Fold]:
    """Grouped folds of the training images, each crossed (when ``cross``) with every family
    of fill, or every method (see ``crossing_column`` and the module's docstring)."""
    groups = frame["group"].to_numpy()
    folds = min(cfg.cv_folds, len(np.unique(groups)))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 source groups in the training split")
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    is_real = frame["label"].to_numpy() == 0
    column = crossing_column(frame) if cross else None
    values = sorted(frame.loc[~is_real, column].unique()) if column else []
    out = []
    for number, (train, test) in enumerate(splitter.split(np.zeros(len(frame)), groups=groups), 1):
        if not values:
            out.append(Fold(f"fold {number}", None, test, train))
            continue
        kind = frame[column].to_numpy()
        for v in values:
            held = test[is_real[test] | (kind[test] == v)]
            kept = train[is_real[train] | (kind[train] != v)]
            out.append(Fold(f"fold {number}, {v}", v, held, kept))
    return out


def choose(
    folds: list[Fold],
    decisions: dict[str, np.ndarray],
    labels: np.ndarray,
    top_k: tuple[int, ...],
    fires: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """k, threshold and calibration from the held-out scores. ``decisions[fold.name]`` holds
    the cell decision values (held-out images, cells) of the fold's model; ``fires[fold.name]``
    marks the held-out images that the copy rule (calibrated on the fold's training images)
    labels inpainted whatever the threshold."""
    conditions = [(f, labels[f.held_out]) for f in folds if len(np.unique(labels[f.held_out])) == 2]
    if not conditions:
        raise ValueError("no held-out fold has both real and inpainted images")
    auc = {
        k: float(
            np.mean([roc_auc_score(y, top_k_mean(decisions[f.name], k)) for f, y in conditions])
        )
        for k in top_k
    }
    k = max(auc, key=lambda key: (auc[key], -key))
    scores = [top_k_mean(decisions[f.name], k) for f, _ in conditions]
    ys = [y for _, y in conditions]
    fired = [(fires or {}).get(f.name, np.zeros(len(y), bool)) for f, y in conditions]
    threshold = _threshold_for_conditions(ys, scores, fired)
    pooled_y, pooled_s = np.concatenate(ys), np.concatenate(scores)
    return {
        "top_k": k,
        "top_k_roc_auc": {str(key): value for key, value in auc.items()},
        "threshold": threshold,
        "calibration": platt_calibration(pooled_y, pooled_s),
        "held_out_roc_auc": {
            f.name: float(roc_auc_score(y, s)) for (f, y), s in zip(conditions, scores, strict=True)
        },
        "held_out_balanced_accuracy": {
            f.name: _balanced_accuracy(y, s, threshold, on)
            for (f, y), s, on in zip(conditions, scores, fired, strict=True)
        },
    }


def _balanced_accuracy(
    y: np.ndarray, scores: np.ndarray, threshold: float, fires: np.ndarray
) -> float:
    said = (scores >= threshold) | fires
    return float(((said[y == 1]).mean() + (~said[y == 0]).mean()) / 2)


def _threshold_for_conditions(
    ys: list[np.ndarray], scores: list[np.ndarray], fires: list[np.ndarray]
) -> float:
    """The threshold with the best mean balanced accuracy over the held-out conditions (each
    condition counts once, however many images it has); candidates are each condition's own
    best threshold and the quantiles of all scores."""
    pooled = np.concatenate(scores)
    candidates = {validation_threshold(y, s) for y, s in zip(ys, scores, strict=True)}
    candidates = sorted(candidates | set(np.quantile(pooled, np.linspace(0, 1, 201)).tolist()))
    mean_ba = [np.mean([_balanced_accuracy(y, s, t, on) for y, s, on in
                        zip(ys, scores, fires, strict=True)]) for t in candidates]  # fmt: skip
    return float(candidates[int(np.argmax(mean_ba))])
