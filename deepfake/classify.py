"""SVM detector: scaling, optional PCA, SVC, grid-searched with folds grouped by source image.

Every split here is grouped: a source photo and all its inpaintings are always on the same side,
in the held-out test split and in every cross-validation fold.
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
from sklearn.metrics import roc_curve
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    GroupShuffleSplit,
    cross_val_predict,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from deepfake.config import SVMConfig
from deepfake.features import feature_matrix
from deepfake.images import sha256
from deepfake.stages import StageOutput, finished, stage_folder, write_manifest
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "detector"
MODEL_FILE = "svm.skops"
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


def grouped_split(groups: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) with no group on both sides; both sides non-empty."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"a grouped split needs at least 2 source groups, got {len(unique)}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train), np.sort(test)


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


def validation_threshold(
    search: GridSearchCV, X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: SVMConfig
) -> float:
    """Decision threshold chosen on validation data only: the best pipeline's out-of-fold scores
    on the training split (same grouped folds), maximising balanced accuracy (Youden's J)."""
    cv = GroupKFold(n_splits=search.n_splits_, shuffle=True, random_state=cfg.seed)
    scores = cross_val_predict(
        clone(search.best_estimator_), X, y, groups=groups, cv=cv, method="decision_function"
    )
    fpr, tpr, thresholds = roc_curve(y, scores)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else 0.0


def output_folder(cfg: SVMConfig, features: StageOutput) -> str:
    from deepfake.config import digest_of

    return stage_folder(
        STAGE, digest_of(cfg.model_dump(mode="json", exclude=_EXECUTION_ONLY)), features
    )


def run_train(storage: Storage, cfg: SVMConfig, features: StageOutput) -> StageOutput:
    """Split, search, refit on the training split; save the model and per-record test scores."""
    folder = output_folder(cfg, features)
    done = finished(storage, STAGE, folder)
    if done:
        log.info("detector: reusing the trained detector in %s", storage.uri(folder))
        return done
    frame = storage.read_parquet(features.manifest)
    X, y, groups = feature_matrix(frame), frame["label"].to_numpy(), frame["group"].to_numpy()
    train, test = grouped_split(groups, cfg.test_size, cfg.seed)
    log.info(
        "detector: %d training images (%d groups), %d test images (%d groups)",
        len(train),
        len(np.unique(groups[train])),
        len(test),
        len(np.unique(groups[test])),
    )
    search = grid_search(X[train], y[train], groups[train], cfg)
    best = search.best_index_
    cv_scores = [search.cv_results_[f"split{i}_test_score"][best] for i in range(search.n_splits_)]
    log.info("detector: best %s, grouped CV ROC-AUC %.4f", search.best_params_, search.best_score_)

    threshold = validation_threshold(search, X[train], y[train], groups[train], cfg)
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
    scores = search.best_estimator_.decision_function(X)
    split = np.where(np.isin(np.arange(len(frame)), test), "test", "train")
    out = frame.drop(columns=["features"]).assign(split=split, score=scores)
    return write_manifest(storage, STAGE, folder, out)


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
