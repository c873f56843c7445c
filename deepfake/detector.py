"""The detector stage: scaling, optional PCA, SVC, grid-searched with folds grouped by source
image.

Every split here is grouped: a source photo and all its inpaintings are always on the same side,
in the held-out test split (the split stage's ``split`` column) and in every cross-validation
fold. The stage folder is a complete detector bundle: ``svm.skops`` (the fitted pipeline),
``detector.json`` (how features are made, threshold, probability calibration, digests) and, for
a fine-tuned backbone, ``backbone.safetensors``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.experimental import enable_halving_search_cv  # noqa: F401 (enables the import below)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    HalvingGridSearchCV,
    cross_val_predict,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from deepfake.config import SVMConfig
from deepfake.features.extractor import WEIGHTS_FILE
from deepfake.features.stage import INFO_FILE, feature_matrix
from deepfake.hashing import digest_of, sha256
from deepfake.split import split_rows
from deepfake.stages import Progress, StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "detector"
MODEL_FILE = "svm.skops"
BUNDLE_FILE = "detector.json"


def build_pipeline(
    cfg: SVMConfig, max_components: int | None = None, memory: str | None = None
) -> Pipeline:
    """Scaler, PCA (``svm.pca_components``, at most ``max_components``), SVC. ``memory`` caches
    the fitted scaler and PCA, so that candidates sharing a fold fit them once."""
    pca: Any = "passthrough"
    components = cfg.pca_components
    if isinstance(components, int) and max_components is not None:
        components = min(components, max_components)
    if components is not None:
        pca = PCA(n_components=components, random_state=cfg.seed)
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("pca", pca),
            # Each source has one real image and five inpaintings: weight the classes evenly.
            ("svm", SVC(class_weight="balanced", cache_size=1000)),
        ],
        memory=memory,
    )


def _linear_svm(seed: int) -> LinearSVC:
    # liblinear solves the linear kernel directly, much faster than libsvm's kernel machinery.
    return LinearSVC(class_weight="balanced", dual="auto", max_iter=20_000, random_state=seed)


def param_grid(cfg: SVMConfig) -> list[dict[str, list[Any]]]:
    grid = []
    for kernel in cfg.kernels:
        if kernel == "linear":
            grid.append({"svm": [_linear_svm(cfg.seed)], "svm__C": list(cfg.C)})
            continue
        entry: dict[str, list[Any]] = {"svm__kernel": [kernel], "svm__C": list(cfg.C)}
        entry["svm__gamma"] = list(cfg.gamma)
        grid.append(entry)
    return grid


def _grid_size(grid: list[dict[str, list[Any]]]) -> int:
    return sum(int(np.prod([len(values) for values in entry.values()])) for entry in grid)


@contextlib.contextmanager
def _portable_warning_filters() -> Iterator[None]:
    """scikit-learn hands the parent's warning filters to its parallel workers; one filter whose
    category is a torch class (torch adds some) makes every worker import torch, about 0.6 GB
    each. While the workers run, keep only the filters of built-in, numpy, scipy and
    scikit-learn categories."""
    light = ("builtins", "numpy", "scipy", "sklearn")
    with warnings.catch_warnings():
        kept = [f for f in warnings.filters if f[2].__module__.split(".")[0] in light]
        warnings.resetwarnings()
        for action, message, category, module, lineno in reversed(kept):
            # A filter holds compiled patterns, or plain strings when a library added it raw.
            text = getattr(message, "pattern", message) or ""
            where = getattr(module, "pattern", module) or ""
            warnings.filterwarnings(action, text, category, where, lineno)
        yield


def _halving_rounds(n: int, folds: int, factor: int) -> int:
    """Rounds of successive halving such that the first round still gives every fold about 60
    images (both classes, a usable ROC-AUC) and the last one uses all ``n``; 0 = too few images
    for halving to pay off."""
    smallest = 60 * folds
    return int(np.floor(np.log(n / smallest) / np.log(factor))) if n >= smallest else 0


def grid_search(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: SVMConfig
) -> GridSearchCV | HalvingGridSearchCV:
    """Search scored by ROC-AUC over grouped folds (as many as there are groups, at most).

    ``svm.search=halving`` (default) is successive halving: every candidate is scored on a
    random subset of the training images (grouped folds all the same), the best third goes on
    with three times the images, and so on until the survivors are scored on all of them; with
    too few images for that, every candidate is scored on all of them (``grid``).
    """
    folds = min(cfg.cv_folds, len(np.unique(groups)))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 source groups in the training split")
    cv = GroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    grid = param_grid(cfg)
    common = {"scoring": "roc_auc", "cv": cv, "n_jobs": cfg.n_jobs, "refit": True,
              "return_train_score": False}  # fmt: skip
    rounds = _halving_rounds(len(y), folds, cfg.halving_factor)
    halving = cfg.search == "halving" and _grid_size(grid) > 1 and rounds > 0
    smallest = len(y) // cfg.halving_factor**rounds if halving else len(y)
    # PCA cannot keep more components than the smallest fit has rows (or features). Grouped
    # folds vary in size: measure them; halving's first round is a random subset of about
    # ``smallest`` images, so leave a margin there.
    if halving:
        fit_rows = int(smallest * (folds - 1) / folds * 0.9)
    else:
        fit_rows = min(len(train) for train, _ in cv.split(X, y, groups))
    limit = min(X.shape[1], fit_rows)
    with tempfile.TemporaryDirectory(prefix="svm-cache-") as cache:
        pipeline = build_pipeline(cfg, limit, memory=cache)
        if halving:
            search: GridSearchCV | HalvingGridSearchCV = HalvingGridSearchCV(
                pipeline,
                grid,
                factor=cfg.halving_factor,
                min_resources=smallest,
                random_state=cfg.seed,
                error_score="raise",
                **common,
            )
        else:
            search = GridSearchCV(pipeline, grid, error_score="raise", **common)
        with _portable_warning_filters():
            search.fit(X, y, groups=groups)
    search.best_estimator_.set_params(memory=None)  # the cache folder is gone
    return search


def out_of_fold_scores(
    search: GridSearchCV | HalvingGridSearchCV,
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    cfg: SVMConfig,
) -> np.ndarray:
    """Decision values of the best pipeline on the training split, each from a fit that did not
    see its group (same grouped folds as the search): validation scores, never test ones."""
    cv = GroupKFold(n_splits=search.n_splits_, shuffle=True, random_state=cfg.seed)
    with _portable_warning_filters():
        return cross_val_predict(
            clone(search.best_estimator_),
            X,
            y,
            groups=groups,
            cv=cv,
            method="decision_function",
            n_jobs=cfg.n_jobs,
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
    return stage_folder(STAGE, digest_of(cfg.result_dict()), features)


def train_detector(storage: Storage, cfg: SVMConfig, features: StageOutput) -> StageOutput:
    """Search and refit on the training split; save the bundle and per-record scores."""

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        frame = storage.read_parquet(features.manifest)
        X, y, groups = feature_matrix(frame), frame["label"].to_numpy(), frame["group"].to_numpy()
        train = split_rows(frame, "train").index.to_numpy()  # frame has a fresh 0..n-1 index
        log.info("detector: searching on %d training images", len(train))
        # The search is most of the work, then the out-of-fold pass, then saving (in tenths).
        progress = Progress("svm search", 10, unit="tenths", log=False)
        search = grid_search(X[train], y[train], groups[train], cfg)
        progress.advance(8)
        best = search.best_index_
        cv_scores = [search.cv_results_[f"split{i}_test_score"][best]
                     for i in range(search.n_splits_)]  # fmt: skip
        log.info("detector: best %s, grouped CV ROC-AUC %.4f", search.best_params_,
                 search.best_score_)  # fmt: skip

        validation = out_of_fold_scores(search, X[train], y[train], groups[train], cfg)
        progress.advance()
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
                "score": "probability of inpainting (Platt-scaled SVM decision value, even "
                "odds); label inpainted when the decision value >= threshold",
                "svm_sha256": sha256(model_bytes),
                "best_params": search.best_params_,
            },
        )
        scores = search.best_estimator_.decision_function(X)
        progress.advance()
        return frame.drop(columns=["features"]).assign(score=scores), files

    return run_stage(storage, STAGE, output_folder(cfg, features), work)


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
    name = f"{storage.uri(folder)}/{MODEL_FILE}"
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise ValueError(f"{name}: digest does not match its metadata")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # not a zip, no schema, ...: nothing in it is ever executed
        raise ValueError(f"{name}: not a skops model file ({type(exc).__name__})") from None
    if untrusted:
        raise ValueError(f"{name}: refusing untrusted types {untrusted}")
    return sio.loads(data, trusted=[])


def scores_frame(storage: Storage, detector: StageOutput) -> pd.DataFrame:
    return storage.read_parquet(detector.manifest)
