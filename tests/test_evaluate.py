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
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (2 / 3) / (2 / 3 + 2 / 3))
    # ranking: positives 2, 3, -0.5 against negatives -1, 0.5 -> 5 of 6 pairs ordered
    assert m["roc_auc"] == pytest.approx(5 / 6)
    # by score: 3 (+), 2 (+), 0.5 (-), -0.5 (+), -1 (-): precision 1, 1, -, 3/4 at each positive
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4) / 3)


def scored_frame() -> pd.DataFrame:
    rows = []
    for g, split in [("a", "test"), ("b", "test"), ("c", "train")]:
        common = {"group": g, "split": split}
        rows.append({**common, "variant": "real", "label": 0, "score": -1.0, "coverage": 0.0,
                     "method": ""})  # fmt: skip
        rows.append({**common, "variant": "random", "label": 1, "score": 1.0, "coverage": 0.42,
                     "method": "telea"})  # fmt: skip
        rows.append({**common, "variant": "diagonal_upper_left", "label": 1, "coverage": 0.5,
                     "score": -2.0 if g == "a" else 2.0, "method": "exemplar"})  # fmt: skip
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
    images = curves(scored_frame(), 0.0, lambda s: 1 / (1 + np.exp(-s)))
    assert set(images) == {"roc.png", "pr.png", "confusion_matrix.png", "reliability.png"}
    assert all(data.startswith(b"\x89PNG") for data in images.values())
    metrics = evaluate(scored_frame(), 0.0, [0.9, 1.0])
    text = report_markdown(
        metrics,
        {
            "data": "sample",
            "backend": "classical",
            "backbone": "efficientnet_lite0",
            "best_params": {"alpha": 0.1, "top_k": 4},
            "skipped": [{"source_id": "broken", "reason": "x.png: empty file"}],
        },
    )
    assert "broken" in text and "x.png: empty file" in text and "| ROC-AUC | 0.7500 |" in text
    assert "| recall at 5 % false positives |" in text


def test_error_rates_by_hand() -> None:
    y = np.array([0] * 100 + [1] * 100)
    s = np.concatenate([np.arange(100), np.arange(100) + 90]).astype(float)  # 10 % overlap
    m = binary_metrics(y, s, threshold=95.0)
    assert m["eer"] == pytest.approx(0.05, abs=0.01)
    assert m["tpr_at_5pct_fpr"] == pytest.approx(0.95, abs=0.02)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.91, abs=0.02)


def test_bootstrap_resamples_whole_groups() -> None:
    from deepfake.evaluate.checks import bootstrap_ci

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
    # Each resample is whole groups: every group's rows all there, as often as it was drawn.
    from deepfake.evaluate.checks import group_resamples

    groups = test["group"].to_numpy()
    size = {g: int((groups == g).sum()) for g in set(groups)}
    for rows in group_resamples(groups, 50, seed=1):
        drawn = pd.Series(groups[rows]).value_counts()
        assert drawn.sum() == len(groups)  # as many groups as there are, drawn whole
        for g, count in drawn.items():
            assert count % size[g] == 0 and set(rows[groups[rows] == g]) == set(
                np.flatnonzero(groups == g)
            )


def test_per_area_and_method_figures_set_reals_against_each_part() -> None:
    metrics = evaluate(scored_frame(), 0.0, [0.9, 1.0])
    areas = metrics["per_mask_area"]
    assert set(areas) == {"0.25-0.45", "0.45-0.55"}
    assert areas["0.25-0.45"]["n_inpainted"] == 2 and areas["0.25-0.45"]["roc_auc"] == 1.0
    assert areas["0.45-0.55"]["n_real"] == 2 and areas["0.45-0.55"]["recall"] == 0.5
    assert metrics["per_method"]["exemplar"]["roc_auc"] == pytest.approx(0.5)
    assert metrics["recall_at_5pct_fpr_small"] is None  # no test edit under 10 %


def test_recall_at_five_percent_false_positives_by_hand() -> None:
    from deepfake.evaluate.metrics import recall_at_fpr

    y = np.array([0] * 20 + [1] * 4)
    s = np.r_[np.arange(20.0), 18.5, 19.5, 30.0, 5.0]
    # 1 real in 20 may be flagged: the bar is the 19th real score (18); 3 of 4 fakes are above
    assert recall_at_fpr(y, s) == pytest.approx(3 / 4)


def test_held_out_figures_are_means_over_splits_by_hand() -> None:
    from deepfake.evaluate.protocol_figures import held_out

    frame = pd.DataFrame({"record_id": list("abcd"), "label": [0, 1, 0, 1],
                          "coverage": [0.0, 0.5, 0.0, 0.05]})  # fmt: skip
    main = {"name": "split 1", "left_out": None, "threshold": 0.0,
            "test_record_ids": ["a", "b"], "test_scores": [-1.0, 1.0]}  # fmt: skip
    other = {"name": "split 2", "left_out": None, "threshold": 0.0,
             "test_record_ids": ["c", "d"], "test_scores": [1.0, -1.0]}  # fmt: skip
    lomo = {"name": "split 1, without telea", "left_out": "telea", "threshold": 2.0,
            "test_record_ids": ["a", "b"], "test_scores": [-1.0, 1.0]}  # fmt: skip
    pde = {"name": "split 2, without family pde", "left_out": "pde", "left_out_by": "family",
           "threshold": 0.0, "test_record_ids": ["c", "d"], "test_scores": [1.0, -1.0]}  # fmt: skip
    patch = {"name": "split 1, without family patch", "left_out": "patch",
             "left_out_by": "family", "threshold": 0.0, "test_record_ids": ["a", "b"],
             "test_scores": [-1.0, 1.0]}  # fmt: skip
    out = held_out(frame, main, [other, lomo, pde, patch])
    families = out["leave_one_family_out"]
    assert set(families) == {"pde", "patch"} and set(out["leave_one_method_out"]) == {"telea"}
    assert families["pde"]["roc_auc"] == 0.0 and families["patch"]["roc_auc"] == 1.0
    assert out["weakest_family"] == "pde"
    splits = out["repeated_splits"]
    assert splits["splits"] == 2 and splits["roc_auc_per_split"] == [1.0, 0.0]
    assert splits["roc_auc"] == 0.5 and splits["roc_auc_std"] == 0.5
    assert splits["balanced_accuracy"] == 0.5 and splits["recall_per_split"] == [1.0, 0.0]
    telea = out["leave_one_method_out"]["telea"]
    assert telea["roc_auc"] == 1.0 and telea["recall"] == 0.0 and telea["specificity"] == 1.0
    assert telea["balanced_accuracy"] == 0.5  # at its own threshold, 2.0
    assert out["balanced_accuracy_at_threshold"] == {
        "split 1": 1.0, "split 2": 0.0, "split 1, without telea": 0.5,
        "split 2, without family pde": 0.0, "split 1, without family patch": 1.0,
    }  # fmt: skip


def test_robustness_by_fill_splits_figures_by_the_method_before_post_processing() -> None:
    from deepfake.evaluate.protocol_figures import by_fill

    methods = ["", "", "exemplar", "exemplar+jpeg", "ns", "", "ns"]
    frame = pd.DataFrame({"record_id": list("abcdefg"), "label": [0, 0, 1, 1, 1, 0, 1],
                          "method": methods})  # fmt: skip
    # Split 1: reals a, b; exemplar fills c, d (one JPEG'd after the edit); an ns fill e.
    # Split 2: real f; an ns fill g.
    one = {"clean": np.array([0.0, 1.0, 2.0, 3.0, 0.5]),
           "jpeg_80": np.array([0.0, 1.0, 0.5, -1.0, 2.0])}  # fmt: skip
    two = {"clean": np.array([0.0, 1.0]), "jpeg_80": np.array([1.0, 0.0])}
    out = by_fill(frame, [(list("abcde"), one), (["f", "g"], two)])
    assert set(out) == {"exemplar", "ns"}
    exemplar, ns = out["exemplar"], out["ns"]
    assert exemplar["n_inpainted"] == 2 and ns["n_inpainted"] == 2
    # Clean: both exemplar fills above both reals; after JPEG one of four pairs ordered.
    assert exemplar["clean"]["roc_auc_per_split"] == [1.0]
    assert exemplar["jpeg_80"]["roc_auc"] == pytest.approx(0.25)
    # Without exemplar fills, split 1 leaves ns (0.5 between the reals 0 and 1): half its pairs.
    assert exemplar["clean"]["roc_auc_without_per_split"] == [0.5]
    assert exemplar["jpeg_80"]["roc_auc_without"] == 1.0
    # ns in both splits: the mean of the splits' figures.
    assert ns["clean"]["roc_auc_per_split"] == [0.5, 1.0] and ns["clean"]["roc_auc"] == 0.75
    assert ns["jpeg_80"]["roc_auc_per_split"] == [1.0, 0.0]
    # Without ns, split 1 keeps the exemplar fills; split 2 has no other fill: no figure.
    assert ns["jpeg_80"]["roc_auc_without_per_split"] == [0.25]
    assert by_fill(frame.drop(columns="method"), [(list("abcde"), one)]) == {}


def test_each_left_out_family_is_split_by_fill_in_figures_and_report() -> None:
    from deepfake.evaluate.protocol_figures import held_out

    methods = ["", "exemplar+jpeg", "ns+poisson", "", "exemplar"]
    frame = pd.DataFrame({"record_id": list("abcde"), "label": [0, 1, 1, 0, 1],
                          "coverage": [0.0, 0.5, 0.5, 0.0, 0.5], "method": methods})  # fmt: skip
    main = {"name": "split 1", "left_out": None, "threshold": 0.0,
            "test_record_ids": list("abc"), "test_scores": [0.0, -1.0, 1.0]}  # fmt: skip
    post = {"name": "split 1, without family postprocessed", "left_out": "postprocessed",
            "left_out_by": "family", "threshold": 0.0, "test_record_ids": list("abc"),
            "test_scores": [0.0, -1.0, 1.0]}  # fmt: skip
    patch = {"name": "split 2, without family patch", "left_out": "patch",
             "left_out_by": "family", "threshold": 0.0, "test_record_ids": list("de"),
             "test_scores": [0.0, 2.0]}  # fmt: skip
    out = held_out(frame, main, [post, patch])
    fills = out["leave_one_family_out"]["postprocessed"]["by_fill"]
    assert fills["exemplar"] == {
        "n_inpainted": 1, "roc_auc": 0.0, "roc_auc_per_split": [0.0],
        "roc_auc_without": 1.0, "roc_auc_without_per_split": [1.0],
    }  # fmt: skip
    assert fills["ns"]["roc_auc"] == 1.0 and fills["ns"]["roc_auc_without"] == 0.0
    # A family of one fill method: nothing is left without it.
    assert out["leave_one_family_out"]["patch"]["by_fill"]["exemplar"]["roc_auc_without"] is None
    notes = {"data": "sample", "backend": "classical", "backbone": "b",
             "best_params": {"alpha": 0.1, "top_k": 4}}  # fmt: skip
    report = report_markdown({**evaluate(scored_frame(), 0.0, [0.9, 1.0]), **out}, notes)
    assert "| postprocessed | exemplar | 1 | 0.0000 | 1.0000 |" in report
    assert "| patch | exemplar | 1 | 1.0000 | n/a |" in report


def test_localisation_scores_heat_maps_against_true_masks(tmp_path) -> None:
    from deepfake.evaluate.localisation import localisation
    from deepfake.images import encode_png
    from deepfake.storage import Storage

    store = Storage(tmp_path)
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 255  # the left half of a 2 x 2 grid of 8-pixel cells
    store.write_bytes("m.png", encode_png(mask))
    calibration = {"a": 1.0, "b": 0.0}  # a cell's probability is sigmoid(decision)
    test = pd.DataFrame({
        "label": [1, 0], "variant": ["diagonal", "real"], "coverage": [0.5, 0.0],
        "mask_uri": ["m.png", ""], "grid": [[2, 2], [2, 2]],
        "heat": [[4.0, -4.0, 4.0, -4.0], [-4.0, -4.0, -4.0, -4.0]],
    })  # fmt: skip
    out = localisation(store, test, calibration, 16)
    assert out["pixel_roc_auc"] == pytest.approx(1.0)
    # Interpolated between cell centres, the heat crosses 0.5 at the mask's edge exactly.
    assert out["iou"] == pytest.approx(1.0) and out["pixel_f1"] == pytest.approx(1.0)
    flipped = test.assign(heat=[[-4.0, 4.0, -4.0, 4.0], [-4.0] * 4])
    wrong = localisation(store, flipped, calibration, 16)
    assert wrong["pixel_roc_auc"] <= 0.5 and wrong["iou"] == 0.0
    assert set(out["per_mask_type"]) == {"diagonal"} and set(out["per_mask_area"]) == {"0.45-0.55"}


def test_localisation_auc_of_every_group_is_scikit_learns(tmp_path) -> None:
    """One sort of every pixel serves every group's pixel ROC-AUC: each equals the AUC of that
    group's own pixels."""
    from sklearn.metrics import roc_auc_score

    from deepfake.evaluate.localisation import localisation, pixel_maps
    from deepfake.images import encode_png
    from deepfake.storage import Storage

    store = Storage(tmp_path)
    rng = np.random.default_rng(7)
    rows = []
    for i in range(8):
        fake = i % 4 != 0
        if fake:
            mask = np.zeros((16, 16), np.uint8)
            mask[rng.integers(0, 8) :, : rng.integers(4, 16)] = 255
            store.write_bytes(f"m{i}.png", encode_png(mask))
        heat = np.round(rng.normal(size=16), 1)  # rounded: ties within and across images
        rows.append({"label": int(fake), "variant": "ab"[i % 2] if fake else "real",
                     "coverage": 0.3 if i % 3 else 0.7, "mask_uri": f"m{i}.png" if fake else "",
                     "grid": [4, 4], "heat": heat.tolist()})  # fmt: skip
    test = pd.DataFrame(rows)
    calibration = {"a": 1.0, "b": 0.0}
    out = localisation(store, test, calibration, 16)
    masks, heats = pixel_maps(store, test, calibration, 16)

    def auc(chosen: np.ndarray) -> float:
        truth = np.concatenate([masks[i].ravel() for i in chosen])
        return roc_auc_score(truth, np.concatenate([heats[i].ravel() for i in chosen]))

    assert out["pixel_roc_auc"] == pytest.approx(auc(np.arange(8)), abs=1e-12)
    for variant in ("a", "b"):
        chosen = np.flatnonzero(test["variant"] == variant)
        got = out["per_mask_type"][variant]["pixel_roc_auc"]
        assert got == pytest.approx(auc(chosen), abs=1e-12)


def test_perturbations_keep_shape_and_change_pixels(textured: np.ndarray) -> None:
    from deepfake.perturb import PERTURBATIONS

    for name, apply in PERTURBATIONS.items():
        out = apply(textured)
        assert out.shape == textured.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, textured), name


def test_shortcut_audit_flags_metadata_that_separates_classes(tmp_path) -> None:
    from deepfake.evaluate.checks import shortcut_audit
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
    notes = {"data": "sample", "backend": "classical", "backbone": "b",
             "best_params": {"alpha": 0.1, "top_k": 4}}  # fmt: skip
    text = report_markdown(tuned, notes)
    assert "## Frozen vs fine-tuned backbone" in text
    assert "| ROC-AUC after jpeg_80 | 0.4000 | 0.9000 |" in text
    assert f"| roc_auc | {frozen['roc_auc']:.4f} | {tuned['roc_auc']:.4f} |" in text


def test_ranking_scores_are_scikit_learns() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from deepfake.evaluate.metrics import ranking_scores

    rng = np.random.default_rng(0)
    for decimals in (0, 1, 6):  # many ties, some, none
        y = rng.integers(0, 2, 300)
        s = np.round(rng.normal(size=300) + y, decimals)
        auc, ap = ranking_scores(y, s)
        assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
