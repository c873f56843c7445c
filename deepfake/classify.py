"""SVM detector: scaling, optional PCA, SVC, grid-searched with folds grouped by source image.

Every split here is grouped: a source photo and all its inpaintings are always on the same side,
in the held-out test split (the split stage's ``split`` column) and in every cross-validation
fold. The stage folder is a complete detector bundle: ``svm.skops`` (the fitted pipeline),
``detector.json`` (how features are made, threshold, probability calibration, digests) and, for
a fine-tuned backbone, ``backbone.safetensors``.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from deepfake.config import SVMConfig
from deepfake.features import INFO_FILE, WEIGHTS_FILE, feature_matrix
from deepfake.images import sha256
from deepfake.stages import StageOutput, finished, stage_folder, write_manifest
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "detector"
MODEL_FILE = "svm.skops"
BUNDLE_FILE = "detector.json"
_EXECUTION_ONLY = {"n_jobs"}


def build_pipeline(cfg: SVMConfig) -> Pipeline:
    pca: Any = "passthrough"
    if cfg.pca_components is not None:
        pca = PCA(n_components=cfg.pca_components, random_state=cfg.seed)
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("pca", pca),
            # Each source has one real image and five inpaintings: weight the classes evenly.
            ("svm", SVC(class_weight="balanced", cache_size=500)),
        ]
    )


def param_grid(cfg: SVMConfig) -> list[dict[str, list[Any]]]:
    grid = []
    for kernel in cfg.kernels:
        entry: dict[str, list[Any]] = {"svm__kernel": [kernel], "svm__C": list(cfg.C)}
        if kernel != "linear":
            entry["svm__gamma"] = list(cfg.gamma)
        grid.append(entry)
    return grid


def grid_search(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: SVMConfig) -> GridSearchCV:
    """Grid search scored by ROC-AUC over grouped folds (as many as there are groups, at most)."""
    folds = min(cfg.cv_folds, len(np.unique(groups)))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 source groups in the training split")
    cv = GroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    search = GridSearchCV(
        build_pipeline(cfg),
        param_grid(cfg),
        scoring="roc_auc",
        cv=cv,
        n_jobs=cfg.n_jobs,
        refit=True,
        error_score="raise",
    )
    search.fit(X, y, groups=groups)
    return search


def out_of_fold_scores(
    search: GridSearchCV, X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: SVMConfig
) -> np.ndarray:
    """Decision values of the best pipeline on the training split, each from a fit that did not
    see its group (same grouped folds as the search): validation scores, never test ones."""
    cv = GroupKFold(n_splits=search.n_splits_, shuffle=True, random_state=cfg.seed)
    return cross_val_predict(
        clone(search.best_estimator_), X, y, groups=groups, cv=cv, method="decision_function"
    )


def validation_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The decision threshold maximising balanced accuracy (Youden's J) on validation scores."""
    fpr, tpr, thresholds = roc_curve(y, scores)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else 0.0


def platt_calibration(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Platt scaling of validation decision values: P(inpainted) = 1 / (1 + exp(-(a s + b))).

    As in Platt (1999), the targets are (n+ + 1) / (n+ + 2) and 1 / (n- + 2) rather than 1 and 0,
    so that well separated scores give confident but finite odds. Classes are weighted evenly: a
    probability assumes even odds of real and inpainted, not the training set's one real image
    per five inpaintings.
    """
    positive, negative = int((y == 1).sum()), int((y == 0).sum())
    target = np.where(y == 1, (positive + 1) / (positive + 2), 1 / (negative + 2))
    balance = np.where(y == 1, len(y) / (2 * positive), len(y) / (2 * negative))
    X = np.concatenate([scores, scores]).reshape(-1, 1)
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([target * balance, (1 - target) * balance])
    fit = LogisticRegression(C=1e4).fit(X, labels, sample_weight=weights)
    return {"a": float(fit.coef_[0, 0]), "b": float(fit.intercept_[0])}


def probability(scores: np.ndarray, calibration: dict[str, float]) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(calibration["a"] * np.asarray(scores) + calibration["b"])))


def output_folder(cfg: SVMConfig, features: StageOutput) -> str:
    from deepfake.config import digest_of

    return stage_folder(
        STAGE, digest_of(cfg.model_dump(mode="json", exclude=_EXECUTION_ONLY)), features
    )


def run_train(storage: Storage, cfg: SVMConfig, features: StageOutput) -> StageOutput:
    """Search and refit on the training split; save the bundle and per-record scores."""
    folder = output_folder(cfg, features)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("detector: reusing the trained detector in %s", storage.uri(folder))
        return done
    frame = storage.read_parquet(features.manifest)
    if "split" not in frame:
        raise ValueError(f"{features.manifest} has no 'split' column: run the split stage first")
    X, y, groups = feature_matrix(frame), frame["label"].to_numpy(), frame["group"].to_numpy()
    train = np.flatnonzero(frame["split"].to_numpy() == "train")
    log.info("detector: searching on %d training images", len(train))
    search = grid_search(X[train], y[train], groups[train], cfg)
    best = search.best_index_
    cv_scores = [search.cv_results_[f"split{i}_test_score"][best] for i in range(search.n_splits_)]
    log.info("detector: best %s, grouped CV ROC-AUC %.4f", search.best_params_, search.best_score_)

    validation = out_of_fold_scores(search, X[train], y[train], groups[train], cfg)
    threshold = validation_threshold(y[train], validation)
    calibration = platt_calibration(y[train], validation)
    log.info("detector: threshold %.4f chosen on out-of-fold training scores", threshold)
    model_bytes = _dump(search.best_estimator_)
    storage.write_bytes(f"{folder}/{MODEL_FILE}", model_bytes)
    storage.write_json(
        f"{folder}/search.json",
        {
            "best_params": search.best_params_,
            "cv_roc_auc": cv_scores,
            "cv_folds": int(search.n_splits_),
            "grid": {k: [str(v) for v in vs] for g in param_grid(cfg) for k, vs in g.items()},
            "model_sha256": sha256(model_bytes),
            "threshold": threshold,
            "threshold_rule": "max balanced accuracy on out-of-fold (grouped) training scores",
        },
    )
    info = storage.read_json(f"{features.folder}/{INFO_FILE}")
    files = [MODEL_FILE, BUNDLE_FILE, "search.json"]
    if info.get("weights"):
        weights = storage.read_bytes(f"{features.folder}/{info['weights']}")
        storage.write_bytes(f"{folder}/{WEIGHTS_FILE}", weights)
        files.append(WEIGHTS_FILE)
    storage.write_json(
        f"{folder}/{BUNDLE_FILE}",
        {
            **info,
            "threshold": threshold,
            "calibration": {"method": "Platt, even odds, out-of-fold scores", **calibration},
            "probability_threshold": float(probability(threshold, calibration)),
            "score": "probability of inpainting (Platt-scaled SVM decision value, even odds); "
            "label inpainted when the decision value >= threshold",
            "svm_sha256": sha256(model_bytes),
            "best_params": search.best_params_,
        },
    )
    scores = search.best_estimator_.decision_function(X)
    out = frame.drop(columns=["features"]).assign(score=scores)
    return write_manifest(storage, STAGE, folder, out, files=files)


def _dump(model: Any) -> bytes:
    # skops, not pickle: loading a model file must never run code that came with the file.
    return canonical_skops(sio.dumps(model))


_SKOPS_ID = re.compile(r'(?<="__id__": )\d+|(?<=")\d+(?=\.npy")')


def canonical_skops(data: bytes) -> bytes:
    """The same skops file with reproducible bytes: object ids (memory addresses in skops' output)
    renumbered in order of appearance, members sorted, timestamps fixed. The same fitted model
    then has the same sha256 in every run."""
    source = zipfile.ZipFile(io.BytesIO(data))
    numbers: dict[str, str] = {}

    def renumber(match: re.Match[str]) -> str:
        return numbers.setdefault(match.group(0), str(len(numbers) + 1))

    schema = _SKOPS_ID.sub(renumber, source.read("schema.json").decode())
    members = {"schema.json": schema.encode()}
    for name in source.namelist():
        if name != "schema.json":
            stem, _, suffix = name.partition(".")
            members[f"{numbers.get(stem, stem)}.{suffix}"] = source.read(name)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, members[name])
    return out.getvalue()


def load_model(storage: Storage, folder: str, expected_sha256: str | None = None) -> Any:
    """Load a fitted pipeline; refuses a file whose digest differs from ``expected_sha256``, and
    any file holding a type outside scikit-learn's and numpy's own (skops' default trust)."""
    data = storage.read_bytes(f"{folder}/{MODEL_FILE}")
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise ValueError(f"{storage.uri(folder)}/{MODEL_FILE}: digest does not match its metadata")
    untrusted = sio.get_untrusted_types(data=data)
    if untrusted:
        raise ValueError(
            f"{storage.uri(folder)}/{MODEL_FILE}: refusing untrusted types {untrusted}"
        )
    return sio.loads(data, trusted=[])


def scores_frame(storage: Storage, detector: StageOutput) -> pd.DataFrame:
    return storage.read_parquet(detector.manifest)
