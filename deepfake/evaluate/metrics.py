"""Metrics of a detector on held-out images. Positive class = inpainted (label 1); scores are SVM
decision values, higher = more likely inpainted. The names of the figures and which view shows
which are in ``names``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from deepfake.evaluate.names import COMPARED


def ranking_scores(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(ROC-AUC, average precision) of one set of scores with both classes present: the same
    values as scikit-learn's ``roc_auc_score`` and ``average_precision_score`` (ties count
    half; precision at each distinct score), from one sort instead of their many checks, so that a
    bootstrap of a thousand resamples takes a fraction of a second."""
    order = np.argsort(-scores, kind="stable")
    return ranked_scores(y[order], scores[order])


def ranked_scores(truth: np.ndarray, ranked: np.ndarray) -> tuple[float, float]:
    """``ranking_scores`` of labels and scores already sorted by descending score: any subset
    taken in order is sorted too, so many subsets of a large set need one sort in all."""
    truth = truth.astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last of each tie
    tps = np.cumsum(truth)[distinct]
    fps = distinct + 1 - tps
    positives, negatives = tps[-1], fps[-1]
    # ROC-AUC: the trapezoids under the ROC curve of the distinct thresholds.
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(tpr) * (tps / (tps + fps))))
    return auc, ap


def _rates(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Equal error rate and the true positive rate at 1 % and 5 % false positives."""
    fpr, tpr, _ = roc_curve(y, scores)
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return {
        "eer": float((fpr[i] + fnr[i]) / 2),
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "tpr_at_5pct_fpr": float(np.interp(0.05, fpr, tpr)),
    }


def binary_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Threshold and ranking metrics; ranking ones are None when only one class is present."""
    predicted = (scores >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    rates = _rates(y, scores) if both else dict.fromkeys(_RATE_KEYS)
    return {
        **rates,
        "roc_auc": float(roc_auc_score(y, scores)) if both else None,
        "average_precision": float(average_precision_score(y, scores)) if both else None,
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)) if both else None,
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "specificity": float((predicted[y == 0] == 0).mean()) if (y == 0).any() else None,
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "confusion_matrix": confusion_matrix(y, predicted, labels=[0, 1]).tolist(),
        "n_real": int((y == 0).sum()),
        "n_inpainted": int((y == 1).sum()),
    }


_RATE_KEYS = ("eer", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr")
# Shares of the image inpainted: small edits, object-sized ones, and the original project's
# large masks (random rectangles 40-60 %, diagonal halves 50 %).
AREA_BUCKETS = ((0.0, 0.10), (0.10, 0.25), (0.25, 0.45), (0.45, 0.55), (0.55, 1.01))


def area_bucket(coverage: float) -> str:
    for low, high in AREA_BUCKETS:
        if low <= coverage < high:
            return f"{low:.2f}-{min(high, 1.0):.2f}"
    return "outside"


def against_reals(test: pd.DataFrame, key: pd.Series, threshold: float) -> dict[str, Any]:
    """For every value of ``key`` among the test fakes: the test real images against those
    fakes (metrics at ``threshold``)."""
    real = test[test["label"] == 0]
    out = {}
    for value in sorted(key[test["label"] == 1].unique()):
        part = pd.concat([real, test[(test["label"] == 1) & (key == value)]])
        out[str(value)] = binary_metrics(
            part["label"].to_numpy(), part["score"].to_numpy(), threshold
        )
    return out


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float = 0.05) -> float | None:
    """Share of inpainted images caught when at most ``fpr`` of the real ones are flagged."""
    if not (y == 0).any() or not (y == 1).any():
        return None
    reals = np.sort(scores[y == 0])[::-1]
    # Above the (k+1)-th highest real score, at most k = floor(fpr x reals) reals are flagged.
    threshold = reals[min(int(np.floor(fpr * len(reals) + 1e-9)), len(reals) - 1)]
    return float((scores[y == 1] > threshold).mean())


def evaluate(scored: pd.DataFrame, threshold: float, held_out_auc: list[float]) -> dict[str, Any]:
    """metrics.json content (without config) from the per-record scores of the detector stage;
    ``held_out_auc``: ROC-AUC of each held-out fold of the training split."""
    test = scored[scored["split"] == "test"]
    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    overall = binary_metrics(y, s, threshold)
    metrics = {k: v for k, v in overall.items() if k not in ("n_real", "n_inpainted")}
    areas = test["coverage"].map(area_bucket)
    small = ((test["coverage"] < 0.10) & (test["label"] == 1)) | (test["label"] == 0)
    metrics.update(
        {
            "n_test_real": overall["n_real"],
            "n_test_inpainted": overall["n_inpainted"],
            "n_test_groups": int(test["group"].nunique()),
            "n_train": int((scored["split"] == "train").sum()),
            "n_train_groups": int(scored.loc[scored["split"] == "train", "group"].nunique()),
            "threshold": threshold,
            "cv_roc_auc_mean": float(np.mean(held_out_auc)),
            "cv_roc_auc_std": float(np.std(held_out_auc)),
            "cv_roc_auc_folds": [float(v) for v in held_out_auc],
            "recall_at_5pct_fpr_small": recall_at_fpr(y[small.to_numpy()], s[small.to_numpy()]),
            "per_mask_type": against_reals(test, test["variant"], threshold),
            "per_mask_area": against_reals(test, areas, threshold),
            "per_method": against_reals(test, test["method"], threshold)
            if "method" in test
            else {},
            "per_family": against_reals(test, test["family"], threshold)
            if "family" in test
            else {},
            "test_groups": sorted(test["group"].unique().tolist()),
        }
    )
    return metrics


def comparison(fine_tuned: dict[str, Any], frozen: dict[str, Any]) -> dict[str, Any]:
    """The figures that tell a fine-tuned backbone from the frozen one, side by side."""

    def pick(m: dict[str, Any]) -> dict[str, Any]:
        out = {k: m.get(k) for k in COMPARED}
        out["roc_auc_ci95"] = m.get("roc_auc_ci95")
        out["robustness_roc_auc"] = {k: v["roc_auc"] for k, v in m.get("robustness", {}).items()}
        return out

    return {"fine_tuned": pick(fine_tuned), "frozen": pick(frozen)}
