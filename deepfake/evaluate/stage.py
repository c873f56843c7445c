"""The evaluation stage: held-out metrics, protocols, plots and report of a trained detector, in a
folder named by the settings recorded in it and the stages it read."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from deepfake.config import Settings
from deepfake.detector.stage import PROTOCOLS_FILE
from deepfake.evaluate.heldout import held_out
from deepfake.evaluate.localisation import localisation
from deepfake.evaluate.metrics import comparison, evaluate
from deepfake.evaluate.plots import curves, example_grid, summary_plots
from deepfake.evaluate.protocols import bootstrap_ci, external_metrics, robustness, shortcut_audit
from deepfake.evaluate.report import report_markdown, write_report
from deepfake.hashing import digest_of
from deepfake.inpaint.stage import backend_note
from deepfake.predict import Detector
from deepfake.sources.stage import external_records, skipped_sources
from deepfake.stages import StageOutput, run_stage, stage_folder
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

STAGE = "evaluation"


def detector_metrics(
    storage: Storage, settings: Settings, detector_stage: StageOutput, which: str = ""
) -> tuple[dict[str, Any], pd.DataFrame, Detector]:
    """Held-out metrics of one trained detector stage: headline, CIs, per mask, calibration and
    (when enabled) robustness. Returns the metrics, the scored records and the loaded detector."""
    scored = storage.read_parquet(detector_stage.manifest)
    search = storage.read_json(f"{detector_stage.folder}/search.json")
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
    protocols_uri = f"{detector_stage.folder}/{PROTOCOLS_FILE}"
    if storage.exists(protocols_uri):
        main = {"name": "split 1", "left_out": None, "threshold": threshold,
                "test_record_ids": list(test["record_id"]),
                "test_scores": list(test["score"])}  # fmt: skip
        metrics.update(held_out(scored, main, storage.read_json(protocols_uri)))
    if settings.evaluate.robustness:
        metrics["robustness"] = robustness(storage, detector, test, threshold, which)
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
        backends = sorted(b for b in scored["backend"].unique() if b)
        metrics["inpaint_backend"] = ", ".join(backends)
        metrics["inpaint_backend_note"] = backend_note(storage, dataset).get("note", "")
        skipped = skipped_sources(storage, sources)
        skipped_features = f"{features.folder}/skipped.json"
        if storage.exists(skipped_features):
            skipped += storage.read_json(skipped_features)
        metrics["skipped_inputs"] = skipped
        external = external_records(storage, sources)
        if external is not None:
            metrics["external"] = external_metrics(storage, model, external, test)
        notes = {
            "data": f"{settings.data.source}, {scored['source_id'].nunique()} sources, "
            f"{len(scored)} images",
            "backend": metrics["inpaint_backend"],
            "backend_note": metrics["inpaint_backend_note"],
            "backbone": settings.features.backbone,
            "best_params": metrics["best_params"],
            "skipped": skipped,
        }
        images = curves(scored, metrics["threshold"], model.probabilities) | summary_plots(metrics)
        images["examples.png"] = example_grid(storage, scored, model, settings.evaluate.examples)
        write_report(storage, folder, metrics, images, report_markdown(metrics, notes))
        log.info(
            "evaluation: held-out ROC-AUC %.4f, accuracy %.4f (%d real, %d inpainted test images)",
            metrics["roc_auc"], metrics["accuracy"], metrics["n_test_real"],
            metrics["n_test_inpainted"],
        )  # fmt: skip
        return test.reset_index(drop=True), ["metrics.json", "report.md", *images]

    inputs = [sources, dataset, features, detector] + ([baseline] if baseline else [])
    folder = stage_folder(STAGE, digest_of(recorded), *inputs)
    return run_stage(storage, STAGE, folder, work)
