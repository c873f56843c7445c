from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GroupKFold

from deepfake.config import SVMConfig
from deepfake.detector import (
    BUNDLE_FILE,
    MODEL_FILE,
    build_pipeline,
    grid_search,
    load_model,
    platt_calibration,
    probability,
    train_detector,
)
from deepfake.features import INFO_FILE
from deepfake.split import grouped_split
from deepfake.stages import StageOutput, write_manifest
from deepfake.storage import Storage


def synthetic(groups: int = 12, per_group: int = 6, dims: int = 16, seed: int = 0):
    """Features where inpainted rows are shifted along a few dimensions, plus group offsets."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        offset = rng.normal(0, 1, dims)
        for i in range(per_group):
            label = int(i > 0)
            x = offset + rng.normal(0, 1, dims)
            x[:4] += 2.5 * label
            rows.append(
                {
                    "record_id": f"g{g}_{i}",
                    "source_id": f"g{g}",
                    "group": f"g{g}",
                    "variant": "real" if label == 0 else f"m{i}",
                    "label": label,
                    "uri": f"x/g{g}_{i}.png",
                    "sha256": "0" * 64,
                    "features": x.astype(np.float32),
                    "split": "test" if g >= groups - 3 else "train",
                }
            )
    return pd.DataFrame(rows)


def features_stage(store: Storage, frame: pd.DataFrame) -> StageOutput:
    """A finished features stage holding ``frame``, as the features stage writes one."""
    info = {"backbone": "efficientnet_lite0", "pooling": "multiscale", "input_size": None,
            "crop_size": None, "dim": 16, "image_size": 32, "weights": None}  # fmt: skip
    store.write_json(f"features/x/{INFO_FILE}", info)
    return write_manifest(store, "features", "features/x", frame, files=[INFO_FILE])


def test_grouped_split_never_shares_a_group() -> None:
    groups = np.repeat(np.arange(10), 6)
    train, test = grouped_split(groups, 0.3, seed=1)
    assert len(train) and len(test)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == len(groups)
    with pytest.raises(ValueError, match="at least 2"):
        grouped_split(np.zeros(5), 0.3, 0)


def test_search_folds_never_straddle_groups() -> None:
    frame = synthetic()
    X = np.stack(frame["features"])
    y, groups = frame["label"].to_numpy(), frame["group"].to_numpy()
    cfg = SVMConfig(C=(1.0,), gamma=("scale",), cv_folds=4)
    search = grid_search(X, y, groups, cfg)
    assert isinstance(search.cv, GroupKFold)
    for train, test in search.cv.split(X, y, groups):
        assert not set(groups[train]) & set(groups[test])
    assert search.best_score_ > 0.9
    kinds = {type(p["svm"]).__name__ if "svm" in p else p["svm__kernel"]
             for p in search.cv_results_["params"]}  # fmt: skip
    assert kinds == {"LinearSVC", "rbf"}  # the linear kernel goes through liblinear


def test_large_training_sets_use_successive_halving() -> None:
    from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV

    frame = synthetic(groups=200)  # 1,200 images: 5 folds of 60 fit four times over
    X, y, groups = np.stack(frame["features"]), frame["label"].to_numpy(), frame["group"].to_numpy()
    cfg = SVMConfig(C=(0.1, 1.0, 10.0), gamma=("scale", 1e-2, 1e-3), cv_folds=5)
    search = grid_search(X, y, groups, cfg)
    assert isinstance(search, HalvingGridSearchCV)
    assert search.n_resources_ == [400, 1200]  # a third of the images, then all of them
    assert search.n_candidates_[0] == 12 and search.n_candidates_[-1] == 4
    assert search.best_score_ > 0.9
    for train, test in search.cv.split(X, y, groups):
        assert not set(groups[train]) & set(groups[test])
    small = grid_search(X[:300], y[:300], groups[:300], cfg)
    assert type(small) is GridSearchCV  # too few images for halving to pay off
    exhaustive = grid_search(X, y, groups, cfg.model_copy(update={"search": "grid"}))
    assert type(exhaustive) is GridSearchCV


def test_pca_option_reduces_dimensions() -> None:
    frame = synthetic()
    X = np.stack(frame["features"])
    pipe = build_pipeline(SVMConfig(pca_components=5)).fit(X, frame["label"])
    assert pipe.named_steps["pca"].n_components_ == 5


def test_train_stage_saves_model_and_refuses_tampered_file(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    features = features_stage(store, synthetic())
    out = train_detector(store, SVMConfig(C=(1.0,), gamma=("scale",), cv_folds=3), features)
    scored = store.read_parquet(out.manifest)
    # The split comes from the split stage's column, untouched.
    assert scored["split"].tolist() == synthetic().sort_values("record_id")["split"].tolist()
    search = store.read_json(f"{out.folder}/search.json")
    assert np.isfinite(search["threshold"]) and "out-of-fold" in search["threshold_rule"]
    model = load_model(store, out.folder, search["model_sha256"])
    X = np.stack(store.read_parquet(features.manifest)["features"])
    assert np.allclose(model.decision_function(X), scored["score"])
    store.write_bytes(
        f"{out.folder}/{MODEL_FILE}", store.read_bytes(f"{out.folder}/{MODEL_FILE}") + b"x"
    )
    with pytest.raises(ValueError, match="digest"):
        load_model(store, out.folder, search["model_sha256"])


def test_bundle_probabilities_are_calibrated_and_agree_with_the_threshold(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    out = train_detector(store, SVMConfig(C=(1.0,), gamma=("scale",), cv_folds=3), features_stage(
        store, synthetic(groups=16))
    )  # fmt: skip
    meta = store.read_json(f"{out.folder}/{BUNDLE_FILE}")
    assert meta["backbone"] == "efficientnet_lite0" and meta["calibration"]["a"] > 0
    scored = store.read_parquet(out.manifest)
    p = probability(scored["score"].to_numpy(), meta["calibration"])
    assert ((p > 0) & (p < 1)).all()
    # The label rule in probability terms is the same as in decision values.
    inpainted = scored["score"].to_numpy() >= meta["threshold"]
    assert (inpainted == (p >= meta["probability_threshold"] - 1e-12)).all()
    test = scored[scored["split"] == "test"]
    brier = np.mean((probability(test["score"], meta["calibration"]) - test["label"]) ** 2)
    assert brier < 0.1  # well separated synthetic data: confident and mostly right


def test_platt_calibration_by_hand() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 2000)
    # Decision values drawn so that the true P(y=1 | s) under even odds is sigmoid(2 s).
    s = np.where(y == 1, rng.normal(1, 1, y.size), rng.normal(-1, 1, y.size))
    fit = platt_calibration(y, s)
    assert fit["a"] == pytest.approx(2.0, abs=0.2) and fit["b"] == pytest.approx(0.0, abs=0.15)


def test_model_file_with_foreign_types_is_refused(tmp_path: Path) -> None:
    import skops.io as sio

    store = Storage(tmp_path)
    store.write_bytes(f"bundle/{MODEL_FILE}", sio.dumps({"payload": Path("/etc/passwd")}))
    with pytest.raises(ValueError, match="untrusted types"):
        load_model(store, "bundle")


def test_model_file_bytes_are_the_same_in_every_process() -> None:
    import subprocess
    import sys

    script = (
        "import hashlib, numpy as np; from deepfake.detector import _dump, build_pipeline; "
        "from deepfake.config import SVMConfig; X = np.random.RandomState(0).rand(40, 5); "
        "m = build_pipeline(SVMConfig(pca_components=3)).fit(X, [0, 1] * 20); "
        "print(hashlib.sha256(_dump(m)).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout
        for _ in range(2)
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 64


def test_parallel_workers_get_only_portable_warning_filters() -> None:
    import warnings

    import torch.jit._trace

    from deepfake.detector import _portable_warning_filters

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit._trace.TracerWarning)
        warnings.filterwarnings("ignore", message="keep me", category=UserWarning)
        before = list(warnings.filters)
        with _portable_warning_filters():  # torch categories would make each worker import torch
            modules = {f[2].__module__.split(".")[0] for f in warnings.filters}
            assert "torch" not in modules and "builtins" in modules
            assert any(f[1] is not None and f[1].pattern == "keep me" for f in warnings.filters)
        assert warnings.filters == before
