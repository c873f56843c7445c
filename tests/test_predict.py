"""Prediction with a multi-crop detector: probabilities per crop and heat maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake.config import load_settings
from deepfake.detector import train_detector
from deepfake.features.stage import extract_features
from deepfake.inpaint import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.predict import Detector
from deepfake.sources.stage import prepare_sources
from deepfake.split import split_dataset
from deepfake.storage import Storage
from flows.predict import main as predict

SETTINGS = [
    "data.limit=24",
    "data.image_size=64",
    "inpaint.backend=classical",
    "features.crop_size=32",
    "features.finetune_epochs=0",
    "svm.kernels=[linear]",
    "svm.C=[1.0]",
    "svm.cv_folds=2",
]


@pytest.fixture(scope="module")
def multi_crop(tmp_path_factory) -> tuple[Storage, str]:
    store = Storage(tmp_path_factory.mktemp("multicrop"))
    cfg = load_settings(overrides=SETTINGS, storage=store.root)
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    features = extract_features(store, cfg.features, split_dataset(store, cfg.split, dataset))
    return store, train_detector(store, cfg.svm, features).folder


def test_crop_probabilities_cover_the_image(multi_crop) -> None:
    store, folder = multi_crop
    detector = Detector.load(store, folder, device="cpu")
    image = np.full((64, 64, 3), 120, np.uint8)
    probabilities, boxes = detector.crop_probabilities(image)
    assert len(probabilities) == len(boxes) == 4
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    covered = np.zeros((64, 64), bool)
    for top, left, h, w in boxes:
        covered[top : top + h, left : left + w] = True
    assert covered.all()


def test_predict_writes_a_heat_map_per_image(multi_crop, tmp_path: Path, capsys) -> None:
    store, folder = multi_crop
    images = sorted(f for f in store.list_files("inpainted") if f.endswith(".png"))[:3]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for rel in images:
        (incoming / Path(rel).name).write_bytes(store.read_bytes(f"inpainted/{rel}"))
    (incoming / "zero.png").write_bytes(b"")
    maps = tmp_path / "maps"
    code = predict(["--model", store.uri(folder), "--heatmaps", str(maps), str(incoming)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1 and len(lines) == 4 and "empty file" in lines[-1]
    written = sorted(p.name for p in maps.iterdir())
    assert written == sorted(f"{Path(rel).name}.heatmap.png" for rel in images)
    assert Image.open(maps / written[0]).size == (64, 64)


def test_heat_maps_need_a_multi_crop_detector(tmp_path: Path, capsys) -> None:
    from tests.test_detector import features_stage, synthetic

    store = Storage(tmp_path)
    cfg = load_settings(overrides=["svm.kernels=[linear]", "svm.C=[1.0]", "svm.cv_folds=2"])
    folder = train_detector(store, cfg.svm, features_stage(store, synthetic())).folder
    code = predict(["--model", store.uri(folder), "--heatmaps", str(tmp_path / "m"), "x.png"])
    assert code == 2 and "multi-crop" in capsys.readouterr().err
