"""SVM search: the detector stage's search against a naive exhaustive grid search.

Features shaped like the real ones (1,280 dimensions, non-negative, low intrinsic dimension,
grouped six images per source: one real, five inpainted; a linear model reaches ROC-AUC ~0.96
and an RBF SVM ~0.97 on them), synthetic so that any size can be made.

- naive: ``GridSearchCV(StandardScaler + SVC(), the full default grid, grouped 5-fold CV)``,
  one fit at a time;
- ours: ``deepfake.detector.grid_search`` with the default settings (successive halving, the
  linear kernel through liblinear, parallel fits), then the out-of-fold scores the stage uses for
  its threshold and probability calibration.

Both are scored by ROC-AUC on a grouped held-out quarter. Prints a table and writes
bench/results/svm.json.

    python bench/svm.py                 # 5,000 samples: naive and ours; 25,000: ours alone
    python bench/svm.py --sizes 2000 --large 0     # a quick look
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import sklearn
from results_file import save
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from deepfake.config import SVMConfig
from deepfake.detector import grid_search, out_of_fold_scores
from deepfake.split import grouped_split


def synthetic_features(
    n: int, dims: int = 1280, latent: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, groups): a source's content is a latent vector; its images scatter around it; an
    inpainting moves it along a direction that partly depends on the content (so a kernel helps);
    a random softplus layer with a decaying spectrum maps latents to ``dims`` features."""
    rng = np.random.default_rng(seed)
    n_groups = n // 6
    weights = rng.normal(0, 1, (latent, dims)) / np.sqrt(latent)
    weights *= 1 / (1 + np.arange(dims) / 200)
    bias = rng.normal(-0.5, 0.5, dims)
    u, v, w = (d / np.linalg.norm(d) for d in rng.normal(0, 1, (3, latent)))
    content = rng.normal(0, 1, (n_groups, latent))
    groups = np.repeat(np.arange(n_groups), 6)
    y = np.tile([0, 1, 1, 1, 1, 1], n_groups)
    z = content[groups] + 0.35 * rng.normal(0, 1, (len(groups), latent))
    strength = rng.uniform(2.0, 4.0, (len(groups), 1))
    z += y[:, None] * strength * (u + 1.2 * np.tanh(2 * content[groups] @ v)[:, None] * w)
    X = np.logaddexp(0, z @ weights + bias) + 0.05 * rng.normal(0, 1, (len(groups), dims))
    return X.astype(np.float32), y, groups.astype(str)


def naive(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: SVMConfig) -> GridSearchCV:
    grid = [
        {"svc__kernel": ["linear"], "svc__C": list(cfg.C)},
        {"svc__kernel": ["rbf"], "svc__C": list(cfg.C), "svc__gamma": list(cfg.gamma)},
    ]
    search = GridSearchCV(
        make_pipeline(StandardScaler(), SVC()),
        grid,
        scoring="roc_auc",
        cv=GroupKFold(n_splits=cfg.cv_folds, shuffle=True, random_state=cfg.seed),
    )
    return search.fit(X, y, groups=groups)


def run(n: int, with_naive: bool, cfg: SVMConfig) -> dict:
    X, y, groups = synthetic_features(n)
    train, test = grouped_split(groups, 0.25, 0)
    row: dict = {"samples": n, "training_samples": len(train), "dims": X.shape[1]}
    start = time.perf_counter()
    ours = grid_search(X[train], y[train], groups[train], cfg)
    row["ours_search_s"] = time.perf_counter() - start
    start = time.perf_counter()
    out_of_fold_scores(ours, X[train], y[train], groups[train], cfg)
    row["ours_out_of_fold_s"] = time.perf_counter() - start
    row["ours_s"] = row["ours_search_s"] + row["ours_out_of_fold_s"]
    row["ours_roc_auc"] = roc_auc_score(y[test], ours.decision_function(X[test]))
    row["ours_best"] = {k: str(v) for k, v in ours.best_params_.items()}
    row["ours_search"] = type(ours).__name__
    print(f"{n:>6} ours : {row['ours_s']:8.1f} s  ROC-AUC {row['ours_roc_auc']:.4f}", flush=True)
    if with_naive:
        start = time.perf_counter()
        baseline = naive(X[train], y[train], groups[train], cfg)
        row["naive_s"] = time.perf_counter() - start
        row["naive_roc_auc"] = roc_auc_score(y[test], baseline.decision_function(X[test]))
        row["naive_best"] = {k: str(v) for k, v in baseline.best_params_.items()}
        row["speedup"] = row["naive_s"] / row["ours_s"]
        print(
            f"{n:>6} naive: {row['naive_s']:8.1f} s  ROC-AUC {row['naive_roc_auc']:.4f}  "
            f"-> {row['speedup']:.1f}x faster",
            flush=True,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000], help="naive vs ours")
    parser.add_argument("--large", type=int, default=25000, help="ours alone (0 = skip)")
    args = parser.parse_args()
    cfg = SVMConfig()
    rows = [run(n, True, cfg) for n in args.sizes]
    if args.large:
        rows.append(run(args.large, False, cfg))
    save(
        "svm",
        {
            "scikit-learn": sklearn.__version__,
            "settings": cfg.model_dump(mode="json"),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
