"""Checks beyond one score per test image: grouped bootstrap intervals, robustness to everyday
degradations, the shortcut audit, and the external test set."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from deepfake.detector.bundle import Detector
from deepfake.evaluate.metrics import binary_metrics, ranking_scores
from deepfake.progress import Progress
from deepfake.storage import Storage

log = logging.getLogger("deepfake")


def group_resamples(groups: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of ``resamples`` bootstrap samples, each made of as many groups as there
    are, drawn whole and with replacement (a photo's images are never split up)."""
    names = np.unique(groups)
    index = {g: np.flatnonzero(groups == g) for g in names}
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.concatenate([index[g] for g in rng.choice(names, size=len(names))])


def bootstrap_ci(test: pd.DataFrame, resamples: int, seed: int) -> dict[str, list[float]]:
    """95 % intervals of ROC-AUC and average precision, resampling whole source groups."""
    if resamples == 0:
        return {}
    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    aucs, aps = [], []
    for rows in group_resamples(test["group"].to_numpy(), resamples, seed):
        if 0 < y[rows].sum() < len(rows):
            auc, ap = ranking_scores(y[rows], s[rows])
            aucs.append(auc)
            aps.append(ap)
    if not aucs:
        return {}
    return {
        "roc_auc_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
        "average_precision_ci95": [float(np.percentile(aps, 2.5)), float(np.percentile(aps, 97.5))],
        "bootstrap_resamples": len(aucs),
    }


def robustness(
    storage: Storage,
    detector: Detector,
    test: pd.DataFrame,
    threshold: float,
    which: str = "",
    scores: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The held-out split again after each degradation, applied to real and inpainted alike;
    ``scores``, when given, receives each degradation's test scores (in ``test``'s order)."""
    from deepfake.perturb import PERTURBATIONS

    y, uris = test["label"].to_numpy(), list(test["uri"])
    table = {"none": binary_metrics(y, test["score"].to_numpy(), threshold)}
    progress = Progress(f"robustness {which}".strip(), len(PERTURBATIONS), "degradations",
                        log=False)  # fmt: skip
    for name, transform in PERTURBATIONS.items():
        values = detector.score_uris(storage, uris, transform)
        table[name] = binary_metrics(y, values, threshold)
        if scores is not None:
            scores[name] = values
        log.info("robustness: %s -> ROC-AUC %.4f", name, table[name]["roc_auc"] or float("nan"))
        progress.advance()
    return table


def shortcut_audit(storage: Storage, scored: pd.DataFrame, folds: int, seed: int) -> dict[str, Any]:
    """A trivial classifier on metadata only (file size, width, height, format, mean intensity),
    with the same grouped protocol. Far from 0.5 means the classes differ in something other than
    content, or that the inpainting is visible in the crudest statistics."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    formats = {"PNG": 0, "JPEG": 1, "WEBP": 2, "BMP": 3, "TIFF": 4}
    rows = []
    for data in storage.read_many(list(scored["uri"])):
        image = Image.open(io.BytesIO(data))
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        code = formats.get(image.format or "", len(formats))
        rows.append([len(data), image.width, image.height, code, pixels.mean()])
    X, y, groups = np.asarray(rows), scored["label"].to_numpy(), scored["group"].to_numpy()
    folds = min(folds, len(np.unique(groups)))
    cv = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
    scores = cross_val_predict(model, X, y, groups=groups, cv=cv, method="decision_function")
    auc = float(roc_auc_score(y, scores))
    result = {
        "features": ["file_size", "width", "height", "format", "mean_intensity"],
        "roc_auc": auc,
        "warning": abs(auc - 0.5) > 0.1,
    }
    if result["warning"]:
        log.warning(
            "shortcut audit: metadata alone reaches ROC-AUC %.3f (far from 0.5): the detector's "
            "figures may owe something to file statistics rather than content", auc,
        )  # fmt: skip
    return result


def external_metrics(
    storage: Storage, detector: Detector, external: pd.DataFrame, test: pd.DataFrame
) -> dict[str, Any]:
    """The detector on the dataset authors' own inpaintings of test-split sources.

    Real side: the same held-out real images as the main test. Inpainted side: the external
    images whose source is in the test split, so no training image is seen again.
    """
    chosen = external[external["group"].isin(set(test["group"]))]
    description = "DeepfakeArt authors' inpainting.png of held-out sources vs held-out real images"
    if chosen.empty:
        return {"n_external_inpainted": 0, "description": description + " (none in the test split)"}
    external_scores = detector.score_uris(storage, list(chosen["uri"]))
    reals = test[test["label"] == 0]
    y = np.concatenate([np.zeros(len(reals), int), np.ones(len(chosen), int)])
    s = np.concatenate([reals["score"].to_numpy(), external_scores])
    result = binary_metrics(y, s, float(detector.meta["threshold"]))
    result["n_external_inpainted"] = result.pop("n_inpainted")
    result["n_test_real"] = result.pop("n_real")
    result["description"] = description
    return result
