"""The whole pipeline as a Prefect flow on a tiny configuration, under a test Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from sklearn.metrics import roc_auc_score

from deepfake.config import load_settings
from deepfake.evaluate.names import HEADLINE_METRICS
from deepfake.predict import Detector
from deepfake.storage import Storage
from flows.main import main, pipeline

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.limit=24",
    "data.image_size=64",
    "features.finetune_epochs=1",  # the fine-tuned path, compared with the frozen one
    "svm.alpha=[0.1]",
    "svm.top_k=[1,4]",
    "svm.cv_folds=3",
    "evaluate.repeats=2",
    "evaluate.bootstrap=200",
]
# For tests about one part of the run (a backend, a source), the slow protocols off.
QUICK = [
    "masks.types=[random,ellipse]",
    "features.finetune_epochs=0",
    "evaluate.repeats=1",
    "evaluate.leave_one_family_out=false",
    "evaluate.robustness=false",
]
STAGE_FOLDERS = ("sources", "masks", "inpainted", "split", "features", "detector", "evaluation")


def run(storage: Path, *extra: str) -> tuple[dict, dict[str, str]]:
    """The run's summary (with its ``flow_run_id``) and its task runs' states by task name."""
    cfg = load_settings(overrides=[*TINY, *extra], storage=str(storage))
    state = pipeline(settings=cfg.model_dump(mode="json"), return_state=True)
    summary = {**state.result(), "flow_run_id": state.state_details.flow_run_id}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return summary, {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def run_folders(store: Storage, summary: dict) -> dict[str, str]:
    """The stage folders a run published from (its ``run.json``)."""
    return store.read_json(f"reports/{summary['run_id']}/run.json")


def stage_files(storage: Path) -> dict[str, int]:
    """Every file of every stage folder, with its modification time (ns)."""
    files = [p for folder in STAGE_FOLDERS for p in (storage / folder).rglob("*") if p.is_file()]
    return {str(p.relative_to(storage)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory):
    storage = tmp_path_factory.mktemp("flow")
    summary, states = run(storage)
    return storage, summary, states


def test_flow_writes_metrics_report_and_bundle(first_run) -> None:
    storage, summary, states = first_run
    assert set(states.values()) == {"Completed"}
    store = Storage(storage)
    metrics = store.read_json(f"reports/{summary['run_id']}/metrics.json")
    assert store.read_json("reports/latest/metrics.json") == metrics
    for key in (
        *HEADLINE_METRICS,  # the one table of metric names
        "cv_roc_auc_mean",
        "cv_roc_auc_std",
        "n_test_real",
        "n_test_inpainted",
        "per_mask_type",
        "config",
    ):
        assert key in metrics, key
    assert set(metrics["per_mask_type"]) == set(metrics["config"]["masks"]["types"])
    assert set(metrics["robustness"]) == {
        "none",
        "jpeg_95",
        "jpeg_80",
        "jpeg_60",
        "downscale_0.75",
        "downscale_0.5",
        "gaussian_blur_1",
    }
    audit = metrics["shortcut_audit"]
    assert audit["warning"] == (abs(audit["roc_auc"] - 0.5) > 0.1)
    low, high = metrics["roc_auc_ci95"]
    assert low <= metrics["roc_auc"] <= high
    assert {"eer", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "per_mask_area"} <= set(metrics)
    assert metrics["n_test_inpainted"] == 9 * metrics["n_test_real"] > 0  # every mask type
    assert 0.8 < metrics["roc_auc"] <= 1.0  # even this tiny detector must learn the difference
    files = store.list_files("reports/latest")
    assert {"roc.png", "pr.png", "confusion_matrix.png", "report.md", "run.json", "examples.png",
            "per_mask.png", "robustness.png", "promotion.json", "reliability.png",
            "held_out.png"} <= files  # fmt: skip
    report = store.read_bytes("reports/latest/report.md").decode()
    # The default backend is auto; without CUDA it falls back, and the report says so.
    note = metrics["inpaint_backend_note"]
    if not torch.cuda.is_available():
        assert "auto fell back" in note and "auto fell back" in report
    assert metrics["inpaint_backend"] in note
    bundle = {"detector.json", "svm.skops", "backbone.safetensors"}  # fine-tuned here
    assert store.read_json("models/latest.json") == {"run_id": summary["run_id"]}  # live
    assert store.list_files(f"models/{summary['run_id']}") == bundle
    comparison = metrics["comparison"]
    assert set(comparison) == {"frozen", "fine_tuned"}
    assert comparison["fine_tuned"]["roc_auc"] == metrics["roc_auc"]
    assert 0.5 < comparison["frozen"]["roc_auc"] <= 1.0
    assert set(comparison["frozen"]["robustness_roc_auc"]) == set(metrics["robustness"])
    assert metrics["finetune"]["epochs"] == 1 and metrics["finetune"]["target"] == "image"
    assert "fine-tuned on the training split only (image head)" in report
    # The Brier score is that of the published probabilities of the test images.
    detector = Detector.load(store, f"models/{summary['run_id']}", device="cpu")
    scored = store.read_parquet(f"{run_folders(store, summary)['detector']}/manifest.parquet")
    test = scored[scored["split"] == "test"]
    brier = np.mean((detector.probabilities(test["score"].to_numpy()) - test["label"]) ** 2)
    assert metrics["brier"] == pytest.approx(brier)
    assert "## Frozen vs fine-tuned backbone" in report
    # The held-out protocols on a backbone tuned on the main split's training images say so.
    assert "So are the repeated splits after the first and every left-out family" in report


def test_flow_reports_held_out_families_splits_and_localisation(first_run) -> None:
    storage, summary, _ = first_run
    store = Storage(storage)
    metrics = store.read_json(f"reports/{summary['run_id']}/metrics.json")
    (manifest,) = Path(storage).glob("inpainted/*/manifest.parquet")  # one inpainting here
    fakes = store.read_parquet(str(manifest.relative_to(storage)))
    families = set(fakes.loc[fakes["label"] == 1, "family"])
    if metrics["inpaint_backend"] == "classical":
        assert families == {"pde", "patch", "learned", "postprocessed"}
        assert set(metrics["per_family"]) == families
    assert set(metrics["leave_one_family_out"]) == families
    assert "leave_one_method_out" not in metrics  # off by default
    for figures in metrics["leave_one_family_out"].values():
        assert figures["splits"] == 2
        for key in ("roc_auc", "balanced_accuracy", "recall", "specificity"):
            assert len(figures[f"{key}_per_split"]) == 2
            assert figures[key] == pytest.approx(sum(figures[f"{key}_per_split"]) / 2)
    weakest = metrics["weakest_family"]
    low = min(f["roc_auc"] for f in metrics["leave_one_family_out"].values())
    assert metrics["leave_one_family_out"][weakest]["roc_auc"] == low
    splits = metrics["repeated_splits"]
    assert splits["splits"] == 2 and splits["roc_auc_per_split"][0] == metrics["roc_auc"]
    assert splits["roc_auc"] == pytest.approx(sum(splits["roc_auc_per_split"]) / 2)
    where = metrics["localisation"]
    assert 0.5 < where["pixel_roc_auc"] <= 1 and where["pixel_f1"] > 0
    assert 0 < where["iou"] <= where["pixel_f1"]  # IoU = F1 / (2 - F1) <= F1, image by image
    assert set(where["per_mask_type"]) == set(metrics["per_mask_type"])
    assert "0.00-0.10" in where["per_mask_area"] and "0.10-0.25" in where["per_mask_area"]
    assert len(metrics["balanced_accuracy_at_threshold"]) == 2 + 2 * len(families)
    report = store.read_bytes("reports/latest/report.md").decode()
    for heading in ("## Over 2 grouped splits", "## Leave one family out", "## Where the edit is",
                    "## Per mask area", "## Per inpainting method"):  # fmt: skip
        assert heading in report, heading
    assert f"Weakest family: **{weakest}**" in report
    over = metrics["robustness_over_splits"]
    assert set(over) == {"jpeg_80", "downscale_0.5"}
    for name, figures in over.items():
        assert len(figures["roc_auc_per_split"]) == 2
        assert figures["roc_auc_per_split"][0] == metrics["robustness"][name]["roc_auc"]
        assert figures["roc_auc"] == pytest.approx(sum(figures["roc_auc_per_split"]) / 2)
    assert "Over 2 grouped splits (each split's own detector" in report
    by_fill = metrics["robustness_by_fill"]
    fills = {m.split("+")[0] for m in fakes.loc[fakes["label"] == 1, "method"]}
    assert set(by_fill) <= fills and by_fill
    # The main split's clean figure of a fill is its test fills against its test reals.
    scored = store.read_parquet(f"{run_folders(store, summary)['detector']}/manifest.parquet")
    test = scored[scored["split"] == "test"]
    fill = test["method"].str.split("+").str[0]
    for method in set(fill[test["label"] == 1]):
        rows = test[(test["label"] == 0) | (fill == method)]
        expected = roc_auc_score(rows["label"], rows["score"])
        assert by_fill[method]["clean"]["roc_auc_per_split"][0] == pytest.approx(expected)
    for entry in by_fill.values():
        assert set(entry) == {"n_inpainted", "clean", *over}
        for figures in (entry[c] for c in ("clean", *over)):
            assert 1 <= len(figures["roc_auc_per_split"]) <= 2
            assert figures["roc_auc"] == pytest.approx(np.mean(figures["roc_auc_per_split"]))
    assert "By the method that made the fill" in report
    # Each left-out family split by fill: the first split's figures from its own test scores.
    protocols = store.read_json(f"{run_folders(store, summary)['detector']}/protocols.json")
    rows = scored.set_index("record_id")
    for family, figures in metrics["leave_one_family_out"].items():
        first = next(p for p in protocols if p["name"] == f"split 1, without family {family}")
        y = rows.loc[first["test_record_ids"], "label"].to_numpy()
        fill = rows.loc[first["test_record_ids"], "method"].str.split("+").str[0].to_numpy()
        scores = np.asarray(first["test_scores"])
        assert set(figures["by_fill"]) >= set(fill[y == 1])
        for method in set(fill[y == 1]):
            chosen = (y == 0) | (fill == method)
            expected = roc_auc_score(y[chosen], scores[chosen])
            assert figures["by_fill"][method]["roc_auc_per_split"][0] == pytest.approx(expected)
    assert "Each left-out family by the method that made the fill" in report


def test_each_split_detector_rescored_gives_its_clean_scores(first_run) -> None:
    """The path that scores the other splits' degraded test images, with no degradation,
    gives back the scores the detector stage gave those detectors' test images."""
    from deepfake.evaluate.robust_splits import split_protocols, split_scores

    storage, summary, _ = first_run
    store = Storage(storage)
    folder = run_folders(store, summary)["detector"]
    (split,) = split_protocols(store.read_json(f"{folder}/protocols.json"))
    scored = store.read_parquet(f"{folder}/manifest.parquet")
    detector = Detector.load(store, folder, device="cpu")
    (scores,) = split_scores(store, detector, scored, [split], None)
    assert np.allclose(scores, split["test_scores"], rtol=1e-4, atol=1e-4)
    (darker,) = split_scores(store, detector, scored, [split], lambda image: image // 2)
    assert not np.allclose(darker, split["test_scores"], rtol=1e-4, atol=1e-4)


def test_published_detector_scores_images(first_run) -> None:
    """The live detector, loaded as ``predict`` loads it, labels the test images as the
    evaluation did, and most real ones come out real."""
    storage, summary, _ = first_run
    store = Storage(storage)
    detector = Detector.load(store, f"models/{summary['run_id']}", device="cpu")
    scored = store.read_parquet(f"{run_folders(store, summary)['detector']}/manifest.parquet")
    test = scored[scored["split"] == "test"]
    labels = {}
    for row in test.itertuples():
        result = detector.score_bytes(store.read_bytes(row.uri), row.uri)
        assert result["decision"] == pytest.approx(row.score, abs=1e-3)
        assert result["label"] == ("inpainted" if row.score >= detector.threshold else "real")
        labels.setdefault(row.label, []).append(result["label"])
    # A detector of 24 small photos: most real images real, most fakes caught.
    assert labels[0].count("real") >= 0.7 * len(labels[0]), labels[0]
    assert labels[1].count("inpainted") >= 0.5 * len(labels[1]), labels[1]


def test_artifacts_are_in_the_prefect_ui(first_run) -> None:
    _, summary, _ = first_run
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["detector-metrics", "detector-report"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[summary["flow_run_id"]]),
            )
        )
    assert {a.key for a in found} == {"detector-metrics", "detector-report"}
    table = next(a for a in found if a.key == "detector-metrics")
    assert "roc_auc" in json.dumps(table.data)
    # The evaluation's long passes over degraded images show their progress, to the end.
    keys = ["robustness-progress", "robustness-over-the-splits-progress"]
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=keys),
                flow_run_id=ArtifactFilterFlowRunId(any_=[summary["flow_run_id"]]),
            )
        )
    assert {a.key: a.data for a in progress} == dict.fromkeys(keys, 100.0)


def test_second_run_recomputes_nothing(first_run) -> None:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilterStartTime
    from prefect.types import DateTime

    storage, summary, _ = first_run
    before, started = stage_files(storage), DateTime.now("UTC")
    again, states = run(storage)
    cached = {name for name, state in states.items() if state == "Cached"}
    assert cached == {
        "prepare-sources",
        "make-masks",
        "collect-inpainting",
        "split-dataset",
        "extract-features",
        "extract-frozen-features",
        "train-detector",
        "train-frozen-detector",
        "evaluate-detector",
    }
    assert states["plan-inpainting"] == "Completed"  # a check that always runs: no batches left
    with get_client(sync_client=True) as client:
        batches = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["inpaint-batch"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
        )
    assert batches == []  # no inpainting subflow ran
    assert stage_files(storage) == before  # not one stage file rewritten
    assert again["roc_auc"] == summary["roc_auc"]
    assert again["run_id"] != summary["run_id"]


# The stage tasks in pipeline order, and for one setting of each stage the first task it redoes:
# everything before that one must stay cached.
STAGE_TASKS = ["prepare-sources", "make-masks", "collect-inpainting", "split-dataset",
               "extract-features", "train-detector", "evaluate-detector"]  # fmt: skip
FIRST_REDONE = {
    "masks.seed=7": "make-masks",
    "inpaint.classical.radius=3": "collect-inpainting",
    "split.seed=1": "split-dataset",
    "features.cells_per_image=16": "extract-features",
    "svm.alpha=[0.3]": "train-detector",
    "evaluate.bootstrap=100": "evaluate-detector",
}
# A quick reference run (no fine-tuning, the evaluation's slow protocols off): the setting under
# test is then the only difference from it.
REFERENCE = (*QUICK, "evaluate.shortcut_audit=false")


@pytest.fixture(scope="module")
def reference_run(prefect_server, tmp_path_factory) -> tuple[Path, dict]:
    storage = tmp_path_factory.mktemp("reference")
    summary, states = run(storage, *REFERENCE)
    assert set(states.values()) == {"Completed"}
    return storage, summary


def test_a_cached_run_loads_no_model_library(first_run, prefect_api_url: str) -> None:
    # A rerun that changed nothing, in a process of its own as a user starts it, imports neither
    # torch, scikit-learn nor matplotlib: each costs a second or more at every start.
    storage, _, _ = first_run
    heavy = ("torch", "torchvision", "sklearn", "matplotlib", "skops")
    code = (
        "import sys; from flows.main import main; code = main(sys.argv[1:]); "
        f"print('loaded:', sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(code)"
    )
    args = ["--storage", str(storage), *(a for o in TINY for a in ("--set", o))]
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "PREFECT_API_URL": prefect_api_url})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stdout, result.stdout[-2000:]


def test_a_local_run_gives_the_temporary_server_time_to_start(monkeypatch, tmp_path) -> None:
    # Without PREFECT_API_URL a run starts Prefect's temporary server, which Prefect gives 20 s
    # to answer: about what it takes on two cores (a newcomer's first run timed out).
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as startup
    from prefect.settings import temporary_settings

    import flows.main
    from tasks._common import LOCAL_SERVER_STARTUP_SECONDS

    waits: list[int] = []
    monkeypatch.setattr(flows.main, "pipeline", lambda **_: waits.append(startup.value()) or {})
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    before = startup.value()
    assert main(["--storage", str(tmp_path)]) == 0
    assert waits == [LOCAL_SERVER_STARTUP_SECONDS] and startup.value() == before
    # A wait the user chose (read by Prefect from the environment) is theirs.
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "7")
    with temporary_settings(updates={startup: 7}):
        assert main(["--storage", str(tmp_path)]) == 0
    assert waits[1:] == [7]


@pytest.mark.parametrize("setting", list(FIRST_REDONE))
def test_changing_one_setting_recomputes_only_downstream(reference_run, setting: str) -> None:
    storage, reference = reference_run
    summary, states = run(storage, *REFERENCE, setting)
    cached = {n for n, s in states.items() if s == "Cached"}
    assert cached == set(STAGE_TASKS[: STAGE_TASKS.index(FIRST_REDONE[setting])])
    # ...and the stages it redid wrote new folders (the setting names them), the others not.
    store = Storage(storage)
    before, after = run_folders(store, reference), run_folders(store, summary)
    assert before["evaluation"] != after["evaluation"]
    assert (before["detector"] != after["detector"]) == (not setting.startswith("evaluate."))
    assert states["evaluate-detector"] == "Completed"  # everything downstream is redone


def test_cache_whose_files_are_gone_is_not_trusted(first_run) -> None:
    storage, _, _ = first_run
    # Other tests add stage folders for other settings: take the files of the first run's
    # folders, whose manifests are the oldest.
    source, fake = (
        min(
            (p for p in (storage / stage).rglob("*.png") if p.parent.name == "images"),
            key=lambda p: ((p.parent.parent / "manifest.parquet").stat().st_mtime_ns, p.name),
        )
        for stage in ("sources", "inpainted")
    )
    source.unlink()
    fake.unlink()
    _, states = run(storage)
    assert states["prepare-sources"] == "Completed"  # rerun, not served from the stale cache
    assert source.exists() and fake.exists()
    # The redone work is byte-identical, so everything downstream stays cached.
    assert states["make-masks"] == states["extract-features"] == "Cached"


def test_cli_refuses_bad_settings_before_running(prefect_server, capsys, tmp_path) -> None:
    assert main(["--storage", str(tmp_path), "--set", "svm.kernel=rbf"]) == 2
    assert "svm.kernel" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_runs_and_prints_summary(first_run, capsys) -> None:
    storage, _, _ = first_run
    assert main(["--storage", str(storage), *sum((["--set", o] for o in TINY), [])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"].startswith(str(storage))
    assert printed["roc_auc"] > 0.8


def test_flow_with_tiny_sd2_pipeline(prefect_server, tmp_path: Path) -> None:
    from deepfake.inpaint.random_pipeline import build_random_pipeline

    model = build_random_pipeline(tmp_path / "tiny-sd2")
    storage = tmp_path / "store"
    sd2 = ["inpaint.backend=sd2", f"inpaint.sd2.model={model}", "inpaint.sd2.device=cpu",
           "inpaint.sd2.steps=2", "inpaint.sd2.resolution=64", "data.limit=16"]  # fmt: skip
    summary, states = run(storage, *sd2, *QUICK)
    assert set(states.values()) == {"Completed"}
    store = Storage(storage)
    metrics = store.read_json(f"reports/{summary['run_id']}/metrics.json")
    assert metrics["inpaint_backend"] == "sd2"
    assert metrics["config"]["inpaint"]["sd2"]["model"] == str(model)
    assert "sd2" in store.read_bytes("reports/latest/report.md").decode()
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["inpainting-progress"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[summary["flow_run_id"]]),
            )
        )
    assert len(progress) == 1 and progress[0].data == 100.0  # this run's, at the end


def test_cli_missing_sd2_model_is_one_clear_line(prefect_server, capsys, tmp_path) -> None:
    settings = [
        "inpaint.backend=sd2",
        f"inpaint.sd2.model={tmp_path / 'nowhere'}",
        "inpaint.sd2.device=cpu",
    ]
    code = main(["--storage", str(tmp_path / "s"), *sum((["--set", s] for s in settings), [])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: inpaint.sd2.model") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_flow_on_a_kaggle_archive_reports_the_external_set(prefect_server, tmp_path: Path):
    from tests.kaggle_archive import build_archive

    archive = tmp_path / "deepfakeart.zip"
    info = build_archive(archive, folders=30, size=64)
    kaggle = ["data.source=kaggle", f"data.kaggle.archive={archive}", "data.limit="]
    summary, states = run(tmp_path / "store", *kaggle, *QUICK)
    assert set(states.values()) == {"Completed"}
    store = Storage(tmp_path / "store")
    metrics = store.read_json(f"reports/{summary['run_id']}/metrics.json")
    external = metrics["external"]
    assert 0 < external["n_external_inpainted"] <= len(info["good"])
    assert external["n_test_real"] == metrics["n_test_real"]
    assert external["roc_auc"] is not None
    report = store.read_bytes("reports/latest/report.md").decode()
    assert "## External test set" in report and "no original.png" in report


def test_cli_kaggle_without_credentials_is_one_clear_line(prefect_server, capsys, tmp_path,
                                                          monkeypatch) -> None:  # fmt: skip
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    code = main(["--storage", str(tmp_path / "s"), "--set", "data.source=kaggle"])
    err = capsys.readouterr().err
    assert code == 2 and "KAGGLE_API_TOKEN" in err and "Traceback" not in err


def test_predict_cli_scores_a_folder_with_a_corrupt_file(first_run, tmp_path, capsys) -> None:
    from flows.predict import main as predict

    storage, _, _ = first_run
    store = Storage(storage)
    real = sorted(f for f in store.list_files("sources") if f.endswith(".png"))[0]
    fake = sorted(f for f in store.list_files("inpainted") if f.endswith(".png"))[0]
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    (folder / "real.png").write_bytes(store.read_bytes(f"sources/{real}"))
    (folder / "sub" / "fake.png").write_bytes(store.read_bytes(f"inpainted/{fake}"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image: ignored")

    code = predict(["--storage", str(storage), "--json", str(folder)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # one unreadable file
    by_name = {Path(line["path"]).name: line for line in lines}
    assert set(by_name) == {"real.png", "fake.png", "broken.jpg"}
    assert "broken.jpg" in by_name["broken.jpg"]["error"]
    for name in ("real.png", "fake.png"):
        assert set(by_name[name]) == {"path", "score", "label"}
    detector = Detector.load(store, "models/latest", device="cpu")
    for name, uri in (("real.png", f"sources/{real}"), ("fake.png", f"inpainted/{fake}")):
        want = detector.score_bytes(store.read_bytes(uri), uri)  # the library's own verdict
        assert by_name[name]["label"] == want["label"]
        assert by_name[name]["score"] == pytest.approx(want["score"], abs=1e-5)

    assert predict(["--storage", str(storage), str(folder / "real.png")]) == 0
    path, score, label = capsys.readouterr().out.strip().split("\t")
    assert path.endswith("real.png") and float(score) == pytest.approx(
        by_name["real.png"]["score"], abs=1e-4
    )
    assert label == by_name["real.png"]["label"]


def test_batch_predict_flow_writes_json_lines(first_run, tmp_path) -> None:
    from flows.predict import batch_predict

    storage, _, _ = first_run
    out = tmp_path / "predictions.jsonl"
    folder = storage / "sources"
    counts = batch_predict([str(folder)], model=str(storage / "models" / "latest"), output=str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts == {"scored": len(lines), "errors": 0} and len(lines) == 24  # data.limit
