"""Publishing and guarded promotion (scheduled retraining), on real detectors."""

from __future__ import annotations

import shutil

import pytest

from deepfake.config import load_settings
from deepfake.detector import train_detector
from deepfake.detector.bundle import Detector, live_bundle
from deepfake.evaluate.stage import evaluate_detector
from deepfake.features.stage import extract_features
from deepfake.inpaint import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.publish import PromotionError, publish_run
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


@pytest.fixture(scope="module")
def trained_good(tmp_path_factory):
    """A storage tree with the GOOD detector trained and evaluated: (root, evaluation, detector)."""
    root = tmp_path_factory.mktemp("trained")
    _, evaluation, detector = train(Storage(root), GOOD)
    return root, evaluation, detector


@pytest.fixture
def fresh(trained_good, tmp_path):
    """A copy of that tree of this test's own: (storage, evaluation, detector)."""
    root, evaluation, detector = trained_good
    shutil.copytree(root, tmp_path / "storage")
    return Storage(tmp_path / "storage"), evaluation, detector


def live_run(store: Storage) -> str:
    """The run id of the live detector, loaded as a user loads it."""
    return Detector.load(store, "models/latest", device="cpu").meta["run_id"]


def test_retraining_promotes_only_a_detector_at_least_as_good(store: Storage) -> None:
    cfg, evaluation, detector = train(store, GOOD)
    first = publish_run(store, "run-a", evaluation, detector)
    assert first["promoted"] and live_run(store) == "run-a"
    assert store.read_json("models/latest.json") == {"run_id": "run-a"}

    cfg_bad, evaluation_bad, detector_bad = train(store, BAD)
    worse = publish_run(store, "run-b", evaluation_bad, detector_bad, "if_better")
    decision = store.read_json("reports/run-b/promotion.json")
    assert not worse["promoted"] and not decision["promote"]
    assert decision["current_roc_auc"] > decision["new_roc_auc"]
    assert decision["current_run_id"] == "run-a" and decision["test_records"] > 0
    assert live_run(store) == "run-a"
    assert store.exists("models/run-b/svm.skops")  # kept under its run id
    assert "Not promoted" in store.read_bytes("reports/run-b/report.md").decode()

    # As good as the current one (its own model, published again under another id): compared on
    # the same test records, and promoted (>=).
    store.write_json("models/latest.json", {"run_id": "run-b"})
    as_good = publish_run(store, "run-a2", evaluation, detector, "if_better")
    assert as_good["promoted"] and live_run(store) == "run-a2"
    store.write_json("models/latest.json", {"run_id": "run-a"})
    same = publish_run(store, "run-c", evaluation, detector, "if_better")
    decision = store.read_json("reports/run-c/promotion.json")
    assert same["promoted"] and "the same detector as the current one" in decision["reason"]
    assert "new_roc_auc" not in decision  # nothing to compare: a rerun that changed nothing
    assert live_run(store) == "run-c"
    assert store.read_json("reports/latest/run.json")["run_id"] == "run-c"


def test_first_detector_is_promoted_when_there_is_none(fresh) -> None:
    store, evaluation, detector = fresh
    assert publish_run(store, "only", evaluation, detector, "if_better")["promoted"]
    assert "no current detector" in store.read_json("reports/only/promotion.json")["reason"]


@pytest.mark.parametrize("run_id", ["latest", ".", "..", "../models", "a/b", "", "-x", "a b"])
def test_a_run_id_that_cannot_name_a_folder_is_refused_before_writing(fresh, run_id: str) -> None:
    store, evaluation, detector = fresh
    before = store.list_files("")
    with pytest.raises(ValueError, match="cannot name a run"):
        publish_run(store, run_id, evaluation, detector)
    assert store.list_files("") == before


class Killed(BaseException):
    """A kill: nothing after it runs (not an Exception, so nothing catches it)."""


def test_a_kill_at_any_write_of_publish_leaves_the_previous_detector_live(
    fresh, monkeypatch
) -> None:
    store, evaluation, detector = fresh
    publish_run(store, "old", evaluation, detector)
    writes = []
    real_write = Storage.write_bytes

    def counting(self, uri, data):
        writes.append(uri)
        real_write(self, uri, data)

    monkeypatch.setattr(Storage, "write_bytes", counting)
    publish_run(store, "count", evaluation, detector, "always")
    total = len(writes)
    assert writes[-1].startswith("reports/latest/") and "models/latest.json" in writes
    for allowed in range(total):
        done = []

        def dying(self, uri, data, done=done, allowed=allowed):
            if len(done) == allowed:
                raise Killed(uri)
            done.append(uri)
            real_write(self, uri, data)

        store.write_json("models/latest.json", {"run_id": "old"})  # as before each attempt
        monkeypatch.setattr(Storage, "write_bytes", dying)
        with pytest.raises(Killed):
            publish_run(store, f"new{allowed}", evaluation, detector, "always")
        monkeypatch.setattr(Storage, "write_bytes", real_write)
        switched = "models/latest.json" in done
        assert live_run(store) == (f"new{allowed}" if switched else "old"), done[-1:]


def test_a_broken_current_detector_stops_if_better_and_always_replaces_it(fresh) -> None:
    store, evaluation, detector = fresh
    publish_run(store, "good", evaluation, detector)
    store.write_bytes("models/good/svm.skops", b"not a model any more")
    with pytest.raises(PromotionError, match="cannot be loaded.*promote always"):
        publish_run(store, "retrain", evaluation, detector, "if_better")
    assert store.read_json("models/latest.json") == {"run_id": "good"}  # still pointing there
    assert store.exists("models/retrain/svm.skops")  # published under its own id
    decision = store.read_json("reports/retrain/promotion.json")
    assert not decision["promote"] and decision["error"]
    assert publish_run(store, "fixed", evaluation, detector, "always")["promoted"]
    assert live_run(store) == "fixed"


def test_a_comparison_that_fails_stops_the_promotion(fresh) -> None:
    store, evaluation, detector = fresh
    publish_run(store, "first", evaluation, detector)
    meta = store.read_json("models/first/detector.json")  # another detector than the new one
    store.write_json("models/first/detector.json", {**meta, "threshold": meta["threshold"] + 1})
    test = store.read_parquet(detector.manifest).query("split == 'test'")
    store.write_bytes(test["uri"].iloc[0], b"truncated")  # a test image the current cannot read
    with pytest.raises(PromotionError, match="comparison with the current detector failed"):
        publish_run(store, "second", evaluation, detector, "if_better")
    assert live_run(store) == "first"


def test_a_bundle_that_does_not_score_as_evaluated_is_not_made_live(fresh) -> None:
    store, evaluation, detector = fresh
    publish_run(store, "first", evaluation, detector)
    manifest = store.read_parquet(detector.manifest)
    store.write_parquet(detector.manifest, manifest.assign(score=manifest["score"] + 0.5))
    with pytest.raises(PromotionError, match="scores its test images"):
        publish_run(store, "second", evaluation, detector, "always")
    assert live_run(store) == "first" and live_bundle(store, "models") == "models/first"


def test_a_bundle_published_by_an_earlier_version_stays_loadable(fresh) -> None:
    store, evaluation, detector = fresh
    publish_run(store, "run", evaluation, detector)
    for name in store.list_files("models/run"):  # the layout of earlier versions
        store.write_bytes(f"models/latest/{name}", store.read_bytes(f"models/run/{name}"))
    store.delete("models/latest.json")
    assert live_bundle(store, "models") == "models/latest" and live_run(store) == "run"


def test_reports_latest_follows_a_run_that_went_live_meanwhile(fresh, monkeypatch) -> None:
    """Two runs publishing at once: the second goes live between the first's pointer and its
    report copy; the first then copies the live (second) run's report."""
    store, evaluation, detector = fresh
    publish_run(store, "second", evaluation, detector, "always")
    real_point = __import__("deepfake.publish", fromlist=["point_latest"]).point_latest

    def racing(storage, models, run_id):  # the other run goes live right after this one
        real_point(storage, models, run_id)
        real_point(storage, models, "second")

    monkeypatch.setattr("deepfake.publish.point_latest", racing)
    publish_run(store, "first", evaluation, detector, "always")
    assert store.read_json("models/latest.json") == {"run_id": "second"}
    assert store.read_json("reports/latest/run.json")["run_id"] == "second"
