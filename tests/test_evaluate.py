from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepfake.evaluate import binary_metrics, evaluate, plots, report_markdown


def test_binary_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([-1.0, 0.5, 2.0, 3.0, -0.5])
    m = binary_metrics(y, s, threshold=0.0)
    # predictions: 0 1 1 1 0 -> tp 2, fp 1, fn 1, tn 1
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    # ranking: positives 2, 3, -0.5 against negatives -1, 0.5 -> 5 of 6 pairs ordered
    assert m["roc_auc"] == pytest.approx(5 / 6)


def scored_frame() -> pd.DataFrame:
    rows = []
    for g, split in [("a", "test"), ("b", "test"), ("c", "train")]:
        rows.append({"group": g, "variant": "real", "label": 0, "score": -1.0, "split": split})
        rows.append({"group": g, "variant": "random", "label": 1, "score": 1.0, "split": split})
        rows.append(
            {
                "group": g,
                "variant": "diagonal_upper_left",
                "label": 1,
                "score": -2.0 if g == "a" else 2.0,
                "split": split,
            }
        )
    frame = pd.DataFrame(rows)
    frame["source_id"] = frame["group"]
    return frame


def test_evaluate_reports_required_keys_and_per_mask_type() -> None:
    metrics = evaluate(scored_frame(), 0.0, [0.9, 1.0])
    for key in (
        "roc_auc",
        "average_precision",
        "accuracy",
        "balanced_accuracy",
        "precision",
        "recall",
        "f1",
        "cv_roc_auc_mean",
        "cv_roc_auc_std",
        "n_test_real",
        "n_test_inpainted",
        "per_mask_type",
    ):
        assert key in metrics
    assert (metrics["n_test_real"], metrics["n_test_inpainted"]) == (2, 4)
    assert metrics["per_mask_type"]["random"]["roc_auc"] == 1.0
    assert metrics["per_mask_type"]["diagonal_upper_left"]["recall"] == 0.5
    assert metrics["cv_roc_auc_mean"] == pytest.approx(0.95)
    assert metrics["test_groups"] == ["a", "b"]


def test_plots_are_pngs_and_report_lists_skipped_inputs() -> None:
    images = plots(scored_frame(), 0.0)
    assert set(images) == {"roc.png", "pr.png", "confusion_matrix.png"}
    assert all(data.startswith(b"\x89PNG") for data in images.values())
    metrics = evaluate(scored_frame(), 0.0, [0.9, 1.0])
    text = report_markdown(
        metrics,
        {
            "data": "sample",
            "backend": "classical",
            "backbone": "efficientnet_lite0",
            "best_params": {},
            "skipped": [{"source_id": "broken", "reason": "x.png: empty file"}],
        },
    )
    assert "broken" in text and "x.png: empty file" in text and "| roc_auc |" in text
