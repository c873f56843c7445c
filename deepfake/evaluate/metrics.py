"""Metrics of a detector on held-out images. Positive class = inpainted (label 1); scores are SVM
decision values, higher = more likely inpainted.

``METRICS`` is the one table of metric names and labels: the report, the Prefect artifact and
the tests read it.
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

# (name in metrics.json, label for people): the headline metrics, in the order they are shown.
METRICS: tuple[tuple[str, str], ...] = (
    ("roc_auc", "ROC-AUC"),
    ("average_precision", "average precision"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("precision", "precision"),
    ("recall", "recall (true positive rate)"),
    ("f1", "F1"),
)
HEADLINE_METRICS = tuple(name for name, _ in METRICS)
# The figures that tell a fine-tuned backbone from the frozen one (report and comparison).
COMPARED = ("roc_auc", "average_precision", "balanced_accuracy", "eer", "tpr_at_5pct_fpr",
            "brier", "cv_roc_auc_mean")  # fmt: skip


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
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "confusion_matrix": confusion_matrix(y, predicted, labels=[0, 1]).tolist(),
        "n_real": int((y == 0).sum()),
        "n_inpainted": int((y == 1).sum()),
    }


_RATE_KEYS = ("eer", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr")
AREA_BUCKETS = ((0.0, 0.45), (0.45, 0.5), (0.5, 0.55), (0.55, 1.01))


def per_area_bucket(test: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Test real images against the inpaintings whose mask covers a given share of the image."""
    real = test[test["label"] == 0]
    out = {}
    for low, high in AREA_BUCKETS:
        fakes = test[(test["label"] == 1) & (test["coverage"] >= low) & (test["coverage"] < high)]
        if len(fakes):
            part = pd.concat([real, fakes])
            out[f"{low:.2f}-{min(high, 1.0):.2f}"] = binary_metrics(
                part["label"].to_numpy(), part["score"].to_numpy(), threshold
            )
    return out


def evaluate(scored: pd.DataFrame, threshold: float, cv_scores: list[float]) -> dict[str, Any]:
    """metrics.json content (without config) from the per-record scores of the detector stage."""
    test = scored[scored["split"] == "test"]
    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    overall = binary_metrics(y, s, threshold)
    real = test[test["label"] == 0]
    per_mask = {}
    for variant in sorted(test.loc[test["label"] == 1, "variant"].unique()):
        part = pd.concat([real, test[test["variant"] == variant]])
        per_mask[variant] = binary_metrics(
            part["label"].to_numpy(), part["score"].to_numpy(), threshold
        )
    metrics = {k: v for k, v in overall.items() if k not in ("n_real", "n_inpainted")}
    metrics.update(
        {
            "n_test_real": overall["n_real"],
            "n_test_inpainted": overall["n_inpainted"],
            "n_test_groups": int(test["group"].nunique()),
            "n_train": int((scored["split"] == "train").sum()),
            "n_train_groups": int(scored.loc[scored["split"] == "train", "group"].nunique()),
            "threshold": threshold,
            "cv_roc_auc_mean": float(np.mean(cv_scores)),
            "cv_roc_auc_std": float(np.std(cv_scores)),
            "cv_roc_auc_folds": [float(v) for v in cv_scores],
            "per_mask_type": per_mask,
            "per_mask_area": per_area_bucket(test, threshold) if "coverage" in test else {},
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
