"""The cell SVM: averaged SGD (what the detector stage fits) against liblinear's LinearSVC.

On the offline default's training cells (the features stage's sample: 24 cells per image, half
inside the inpainted region; made once under ``--storage``), for each L2 penalty of the default
search (``svm.alpha``; LinearSVC gets the equivalent C = 1 / (alpha x cells)):

- fit time of one model on all training cells;
- grouped 3-fold cell ROC-AUC (folds by source photo, as the stage's search).

Prints a table and writes bench/results/svm.json.

    python bench/svm.py [--storage bench/.data]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import sklearn
from results_file import save
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from deepfake.config import load_settings
from deepfake.detector.model import cell_svm
from deepfake.detector.training import cell_labels
from deepfake.features.stage import INFO_FILE, cell_matrix, extract_features, with_cells
from deepfake.inpaint import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.split import split_dataset
from deepfake.storage import Storage


def liblinear(alpha: float, cells: int, seed: int) -> Pipeline:
    svm = LinearSVC(C=1.0 / (alpha * cells), class_weight="balanced", random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("svm", svm)])


def measure(make, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(seconds to fit on everything, mean grouped 3-fold ROC-AUC)."""
    start = time.perf_counter()
    make().fit(X, y)
    seconds = time.perf_counter() - start
    aucs = []
    for train, test in GroupKFold(3, shuffle=True, random_state=0).split(X, y, groups):
        model = make().fit(X[train], y[train])
        aucs.append(roc_auc_score(y[test], model.decision_function(X[test])))
    return seconds, float(np.mean(aucs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="bench/.data", help="where the images are made")
    args = parser.parse_args()
    cfg = load_settings(overrides=["inpaint.backend=classical"])
    store = Storage(args.storage)
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    split = split_dataset(store, cfg.split, dataset)
    features = extract_features(store, cfg.features, split)
    frame = with_cells(store, features)
    dim = store.read_json(f"{features.folder}/{INFO_FILE}")["cell_dim"]
    X, coverage, rows = cell_matrix(frame, dim)
    train = frame["split"].to_numpy()[rows] == "train"
    X, y = X[train], cell_labels(coverage[train])
    groups = frame["group"].to_numpy()[rows][train]
    results = []
    for alpha in cfg.svm.alpha:
        row = {"alpha": alpha, "cells": len(X), "dims": X.shape[1]}
        row["sgd_fit_s"], row["sgd_cell_roc_auc"] = measure(
            lambda a=alpha: cell_svm(a, cfg.svm.seed, cfg.svm.epochs), X, y, groups
        )
        row["liblinear_fit_s"], row["liblinear_cell_roc_auc"] = measure(
            lambda a=alpha: liblinear(a, len(X), cfg.svm.seed), X, y, groups
        )
        row["speedup"] = row["liblinear_fit_s"] / row["sgd_fit_s"]
        results.append(row)
        print(
            f"alpha {alpha:<5} {len(X)} cells: SGD {row['sgd_fit_s']:6.2f} s, ROC-AUC "
            f"{row['sgd_cell_roc_auc']:.4f} | liblinear {row['liblinear_fit_s']:6.2f} s, ROC-AUC "
            f"{row['liblinear_cell_roc_auc']:.4f} -> {row['speedup']:.1f}x faster",
            flush=True,
        )
    save("svm", {"scikit-learn": sklearn.__version__, "rows": results})


if __name__ == "__main__":
    main()
