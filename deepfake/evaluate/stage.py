"""The evaluation stage: held-out metrics, the held-out detectors' figures, checks, plots and the
report of a trained detector, in a folder named by the settings recorded in it and the stages it
read. ``metrics.json`` and ``report.md`` (plus the plots) are its files; ``evaluation_metrics``
and ``evaluation_files`` read them."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from deepfake.config import Settings
from deepfake.detector.bundle import Detector
from deepfake.detector.stage import protocol_results, search_results
from deepfake.evaluate.checks import bootstrap_ci, external_metrics, robustness, shortcut_audit
from deepfake.evaluate.localisation import localisation
from deepfake.evaluate.metrics import comparison, evaluate
from deepfake.evaluate.outputs import METRICS_FILE, REPORT_FILE
from deepfake.evaluate.plots import curves, example_grid, summary_plots
from deepfake.evaluate.protocol_figures import held_out
from deepfake.evaluate.report import report_markdown
from deepfake.evaluate.robust_splits import robustness_over_splits, split_protocols
from deepfake.features.stage import skipped_features
from deepfake.hashing import digest_of
from deepfake.inpaint.stage import backend_note
from deepfake.sources.stage import external_records, skipped_sources
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "evaluation"
# What shapes the figures and plots besides the settings (the detector rescores degraded copies).
PACKAGES = ("scikit-learn", "matplotlib", "numpy", "torch", "pillow")


def detector_metrics(
    storage: Storage, settings: Settings, detector_stage: StageOutput, which: str = ""
) -> tuple[dict[str, Any], pd.DataFrame, Detector]:
    """Held-out metrics of one trained detector stage: headline, CIs, per mask, calibration and
    (when enabled) robustness. Returns the metrics, the scored records and the loaded detector."""
    scored = storage.read_parquet(detector_stage.manifest)
    search = search_results(storage, detector_stage)
    detector = Detector.load(storage, detector_stage.folder, settings.features.device)
    threshold = float(search["threshold"])
    metrics = evaluate(scored, threshold, list(search["held_out_roc_auc"].values()))
    test = scored[scored["split"] == "test"]
    metrics.update(bootstrap_ci(test, settings.evaluate.bootstrap, settings.evaluate.seed))
    probabilities = detector.probabilities(test["score"].to_numpy())
    metrics["brier"] = float(np.mean((probabilities - test["label"].to_numpy()) ** 2))
    metrics["probability_threshold"] = detector.meta["probability_threshold"]
    metrics["best_params"] = {"alpha": search["alpha"], "top_k": search["top_k"]}
    metrics["features"] = {
        k: detector.meta.get(k) for k in ("backbone", "input_size", "cell", "cell_dim")
    }
    metrics["finetune"] = detector.meta.get("finetune")
    metrics["localisation"] = localisation(storage, test, detector.meta["cell_calibration"],
                                           detector.image_size)  # fmt: skip
    protocols = protocol_results(storage, detector_stage)
    main = {"name": "split 1", "left_out": None, "threshold": threshold,
            "test_record_ids": list(test["record_id"]),
            "test_scores": list(test["score"])}  # fmt: skip
    if protocols:
        metrics.update(held_out(scored, main, protocols))
    if settings.evaluate.robustness:
        degraded: dict[str, np.ndarray] = {}
        metrics["robustness"] = robustness(storage, detector, test, threshold, which, degraded)
        if split_protocols(protocols):
            main.update(robustness=metrics["robustness"], degraded=degraded)
            over, by_fill = robustness_over_splits(storage, detector, scored, main, protocols)
            metrics["robustness_over_splits"] = over
            metrics["robustness_by_fill"] = by_fill
    return metrics, scored, detector


def evaluate_detector(
    storage: Storage,
    settings: Settings,
    sources: StageOutput,
    dataset: StageOutput,
    features: StageOutput,
    detector: StageOutput,
    baseline: StageOutput | None = None,
) -> StageOutput:
    """Metrics, plots and report of a trained detector. ``baseline`` (a detector on frozen
    features) adds the frozen vs fine-tuned comparison.

    The folder is named by the stages read and by the settings the report records (those that
    shape results: not the storage root, not how fast or where the work ran), so two runs that
    differ only in those share it."""
    recorded = settings.result_dict()

    def work(folder: str) -> tuple[pd.DataFrame, list[str]]:
        metrics, scored, model = detector_metrics(storage, settings, detector)
        if baseline is not None:
            frozen, _, _ = detector_metrics(storage, settings, baseline, "frozen backbone")
            metrics["comparison"] = comparison(metrics, frozen)
        test = scored[scored["split"] == "test"]
        if settings.evaluate.shortcut_audit:
            metrics["shortcut_audit"] = shortcut_audit(
                storage, scored, settings.svm.cv_folds, settings.svm.seed
            )
        metrics["config"] = recorded
        metrics.update(_inputs(storage, sources, dataset, features, scored))
        external = external_records(storage, sources)
        if external is not None:
            metrics["external"] = external_metrics(storage, model, external, test)
        files = _write(storage, folder, settings, metrics, scored, model)
        log.info(
            "evaluation: held-out ROC-AUC %.4f, accuracy %.4f (%d real, %d inpainted test images)",
            metrics["roc_auc"], metrics["accuracy"], metrics["n_test_real"],
            metrics["n_test_inpainted"],
        )  # fmt: skip
        return test.reset_index(drop=True), files

    inputs = [sources, dataset, features, detector] + ([baseline] if baseline else [])
    folder = stage_folder(STAGE, digest_of(recorded), *inputs, packages=PACKAGES)
    return run_stage(storage, STAGE, folder, work)


def _inputs(
    storage: Storage, sources: StageOutput, dataset: StageOutput, features: StageOutput,
    scored: pd.DataFrame,
) -> dict[str, Any]:  # fmt: skip
    """What the report says of its inputs: the inpainting backend (and why it was chosen), the
    inputs skipped on the way."""
    backends = sorted(b for b in scored["backend"].unique() if b)
    return {
        "inpaint_backend": ", ".join(backends),
        "inpaint_backend_note": backend_note(storage, dataset).get("note", ""),
        "skipped_inputs": skipped_sources(storage, sources) + skipped_features(storage, features),
    }


def _write(
    storage: Storage, folder: str, settings: Settings, metrics: dict[str, Any],
    scored: pd.DataFrame, model: Detector,
) -> list[str]:  # fmt: skip
    """Plots, ``report.md`` and ``metrics.json``; returns the names written."""
    notes = {
        "data": f"{settings.data.source}, {scored['source_id'].nunique()} sources, "
        f"{len(scored)} images",
        "backend": metrics["inpaint_backend"],
        "backend_note": metrics["inpaint_backend_note"],
        "backbone": settings.features.backbone,
        "best_params": metrics["best_params"],
        "skipped": metrics["skipped_inputs"],
    }
    images = curves(scored, metrics["threshold"], model.probabilities) | summary_plots(metrics)
    images["examples.png"] = example_grid(storage, scored, model, settings.evaluate.examples)
    for name, data in images.items():
        storage.write_bytes(f"{folder}/{name}", data)
    storage.write_bytes(f"{folder}/{REPORT_FILE}", report_markdown(metrics, notes).encode())
    storage.write_json(f"{folder}/{METRICS_FILE}", metrics)
    return [METRICS_FILE, REPORT_FILE, *images]
