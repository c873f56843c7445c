from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepfake.evaluate.metrics import binary_metrics, evaluate
from deepfake.evaluate.plots import curves
from deepfake.evaluate.report import report_markdown


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
    images = curves(scored_frame(), 0.0)
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


def test_error_rates_by_hand() -> None:
    y = np.array([0] * 100 + [1] * 100)
    s = np.concatenate([np.arange(100), np.arange(100) + 90]).astype(float)  # 10 % overlap
    m = binary_metrics(y, s, threshold=95.0)
    assert m["eer"] == pytest.approx(0.05, abs=0.01)
    assert m["tpr_at_5pct_fpr"] == pytest.approx(0.95, abs=0.02)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.91, abs=0.02)


def test_bootstrap_resamples_whole_groups() -> None:
    from deepfake.evaluate.protocols import bootstrap_ci

    rng = np.random.default_rng(0)
    rows = []
    for g in range(10):
        shift = rng.normal()
        for label in (0, 1, 1):
            rows.append({"group": f"g{g}", "label": label, "score": shift + label + rng.normal()})
    test = pd.DataFrame(rows)
    ci = bootstrap_ci(test, 300, seed=1)
    assert ci == bootstrap_ci(test, 300, seed=1)  # seeded
    low, high = ci["roc_auc_ci95"]
    from sklearn.metrics import roc_auc_score

    assert low <= roc_auc_score(test["label"], test["score"]) <= high and high - low > 0.01
    assert bootstrap_ci(test, 0, 0) == {}


def test_per_area_buckets_use_mask_coverage() -> None:
    from deepfake.evaluate.metrics import per_area_bucket

    frame = scored_frame()
    frame["coverage"] = [0.0, 0.5, 0.42] * 3
    buckets = per_area_bucket(frame[frame["split"] == "test"], 0.0)
    assert set(buckets) == {"0.00-0.45", "0.50-0.55"}
    assert buckets["0.50-0.55"]["n_inpainted"] == 2 and buckets["0.50-0.55"]["roc_auc"] == 1.0


def test_perturbations_keep_shape_and_change_pixels(textured: np.ndarray) -> None:
    from deepfake.perturb import PERTURBATIONS

    for name, apply in PERTURBATIONS.items():
        out = apply(textured)
        assert out.shape == textured.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, textured), name


def test_shortcut_audit_flags_metadata_that_separates_classes(tmp_path) -> None:
    from deepfake.evaluate.protocols import shortcut_audit
    from deepfake.images import encode_png
    from deepfake.storage import Storage

    store, rng, rows = Storage(tmp_path), np.random.default_rng(0), []
    for g in range(12):
        for label in (0, 1):
            # label 1: flat images (small PNGs), label 0: noise (large PNGs): a pure shortcut
            pixels = rng.integers(0, 255, (32, 32, 3)) if label == 0 else np.full((32, 32, 3), 90)
            uri = f"img/{g}_{label}.png"
            store.write_bytes(uri, encode_png(pixels.astype(np.uint8)))
            rows.append({"uri": uri, "label": label, "group": f"g{g}"})
    audit = shortcut_audit(store, pd.DataFrame(rows), folds=3, seed=0)
    assert audit["roc_auc"] > 0.9 and audit["warning"]


def test_report_compares_frozen_and_fine_tuned() -> None:
    from deepfake.evaluate.metrics import comparison

    tuned = evaluate(scored_frame(), 0.0, [0.9, 1.0])
    frozen = evaluate(scored_frame().assign(score=lambda f: f["score"] * -1), 0.0, [0.5, 0.6])
    for m, jpeg in ((tuned, 0.9), (frozen, 0.4)):
        rest = {"balanced_accuracy": None, "recall": None}
        m["robustness"] = {"none": {"roc_auc": m["roc_auc"], **rest},
                           "jpeg_80": {"roc_auc": jpeg, **rest}}  # fmt: skip
    tuned["comparison"] = comparison(tuned, frozen)
    assert tuned["comparison"]["frozen"]["cv_roc_auc_mean"] == pytest.approx(0.55)
    assert tuned["comparison"]["fine_tuned"]["robustness_roc_auc"] == {
        "none": tuned["roc_auc"],
        "jpeg_80": 0.9,
    }
    notes = {"data": "sample", "backend": "classical", "backbone": "b", "best_params": {}}
    text = report_markdown(tuned, notes)
    assert "## Frozen vs fine-tuned backbone" in text
    assert "| ROC-AUC after jpeg_80 | 0.4000 | 0.9000 |" in text
    assert f"| roc_auc | {frozen['roc_auc']:.4f} | {tuned['roc_auc']:.4f} |" in text
