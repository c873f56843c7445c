"""Which fine-tuning recipe? Grouped cross-validation inside the training split only.

The recipe (epochs, learning rate) is chosen without looking at the held-out test split: the
training split of the offline default is cut into grouped folds; for each fold the backbone is
fine-tuned on the other folds, an SVM is searched on them, and the held-out fold is scored clean
and after JPEG quality 80. Prints a table and writes bench/results/finetune_cv.json.

    python bench/finetune_cv.py [--storage DIR] [--folds 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from results_file import save
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from deepfake.config import SVMConfig, load_settings
from deepfake.detector import grid_search
from deepfake.features import FeatureExtractor, read_images
from deepfake.features.finetune import finetune
from deepfake.inpaint import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.perturb import PERTURBATIONS
from deepfake.sources.stage import prepare_sources
from deepfake.split import split_dataset, split_rows
from deepfake.storage import Storage

RECIPES = {  # name: (epochs, learning rate)
    "frozen": (0, 0.0),
    "3 epochs, lr 1e-4 (default)": (3, 1e-4),
    "3 epochs, lr 3e-5": (3, 3e-5),
    "1 epoch, lr 1e-4": (1, 1e-4),
    "6 epochs, lr 3e-5": (6, 3e-5),
}
SVM = SVMConfig(kernels=("rbf",), C=(1.0, 10.0, 100.0), gamma=("scale", 1e-3, 1e-4), cv_folds=3)


def vectors(extractor: FeatureExtractor, images: np.ndarray) -> np.ndarray:
    batches = [list(images[i : i + 64]) for i in range(0, len(images), 64)]
    return np.concatenate([extractor.transform(batch) for batch in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="bench/.data", help="where the dataset is made")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_settings(overrides=["inpaint.backend=classical"])
    store = Storage(args.storage)
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    train = split_rows(
        store.read_parquet(split_dataset(store, cfg.split, dataset).manifest), "train"
    )
    images = np.stack(read_images(store, list(train["uri"])))
    degraded = np.stack([PERTURBATIONS["jpeg_80"](image) for image in images])
    y, groups = train["label"].to_numpy(), train["group"].to_numpy()
    folds = list(GroupKFold(args.folds, shuffle=True, random_state=0).split(images, y, groups))
    results = {}
    for name, (epochs, lr) in RECIPES.items():
        start, clean, jpeg = time.monotonic(), [], []
        for fit, held in folds:
            extractor = FeatureExtractor("efficientnet_lite0", device="cpu")
            if epochs:

                def load(idx: list[int], fit: np.ndarray = fit) -> tuple[list[int], list]:
                    return idx, list(images[fit[idx]])

                finetune(extractor, load, y[fit], epochs=epochs, lr=lr, batch_size=32, seed=0)
            X, XJ = vectors(extractor, images), vectors(extractor, degraded)
            search = grid_search(X[fit], y[fit], groups[fit], SVM)
            clean.append(roc_auc_score(y[held], search.decision_function(X[held])))
            jpeg.append(roc_auc_score(y[held], search.decision_function(XJ[held])))
        results[name] = {"clean": clean, "jpeg_80": jpeg, "seconds": time.monotonic() - start}
        print(
            f"{name:30s} ROC-AUC clean {np.mean(clean):.4f} (min {min(clean):.4f})  "
            f"JPEG 80 {np.mean(jpeg):.4f} (min {min(jpeg):.4f})",
            flush=True,
        )
    save(
        "finetune_cv",
        {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "folds": args.folds,
            "training_images": len(train),
            "training_groups": int(len(np.unique(groups))),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
