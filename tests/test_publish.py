"""Publishing and guarded promotion (scheduled retraining), on real detectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepfake.config import load_settings
from deepfake.detector import train_detector
from deepfake.evaluate.stage import evaluate_detector
from deepfake.features.stage import extract_features
from deepfake.inpaint import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.publish import publish_run
from deepfake.sources.stage import prepare_sources
from deepfake.split import split_dataset
from deepfake.storage import Storage

BASE = [
    "data.limit=30",
    "data.image_size=48",
    "features.input_size=64",
    "inpaint.backend=classical",
    "masks.types=[random,ellipse]",
    "svm.cv_folds=2",
    "evaluate.repeats=1",
    "evaluate.leave_one_family_out=false",
    "evaluate.robustness=false",
]
GOOD = ["svm.alpha=[0.1]", "svm.top_k=[1,4]"]
# Every cell averaged, under a penalty that leaves little of the model: a genuinely worse one.
BAD = ["svm.alpha=[1000]", "svm.top_k=[10000]"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Storage:
    return Storage(tmp_path_factory.mktemp("publish"))


def train(store: Storage, svm: list[str]):
    cfg = load_settings(overrides=[*BASE, *svm], storage=store.root)
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    features = extract_features(store, cfg.features, split_dataset(store, cfg.split, dataset))
    detector = train_detector(store, cfg.svm, features)
    evaluation = evaluate_detector(store, cfg, sources, dataset, features, detector)
    return cfg, evaluation, detector


def test_retraining_promotes_only_a_detector_at_least_as_good(store: Storage) -> None:
    cfg, evaluation, detector = train(store, GOOD)
    first = publish_run(store, "run-a", evaluation, detector)
    assert first["promoted"] and store.read_json("models/latest/detector.json")["run_id"] == "run-a"

    cfg_bad, evaluation_bad, detector_bad = train(store, BAD)
    worse = publish_run(store, "run-b", evaluation_bad, detector_bad, "if_better")
    decision = store.read_json("reports/run-b/promotion.json")
    assert not worse["promoted"] and not decision["promote"]
    assert decision["current_roc_auc"] > decision["new_roc_auc"]
    assert decision["current_run_id"] == "run-a" and decision["test_records"] > 0
    assert store.read_json("models/latest/detector.json")["run_id"] == "run-a"
    assert store.exists("models/run-b/svm.skops")  # kept under its run id
    assert "Not promoted" in store.read_bytes("reports/run-b/report.md").decode()

    same = publish_run(store, "run-c", evaluation, detector, "if_better")
    decision = store.read_json("reports/run-c/promotion.json")
    assert same["promoted"] and decision["new_roc_auc"] == pytest.approx(
        decision["current_roc_auc"]
    )
    assert store.read_json("models/latest/detector.json")["run_id"] == "run-c"


def test_first_detector_is_promoted_when_there_is_none(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    cfg, evaluation, detector = train(store, GOOD)
    assert publish_run(store, "only", evaluation, detector, "if_better")["promoted"]
    assert "no current detector" in store.read_json("reports/only/promotion.json")["reason"]
