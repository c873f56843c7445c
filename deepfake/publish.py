"""Publishing a run: its report and detector bundle under the run id and under ``latest``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from deepfake.config import Settings
from deepfake.predict import save_bundle
from deepfake.stages import StageOutput
from deepfake.storage import Storage


def new_run_id(settings: Settings) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{settings.digest()[:8]}"


def publish_run(
    storage: Storage,
    settings: Settings,
    run_id: str,
    evaluation: StageOutput,
    detector: StageOutput,
) -> dict[str, Any]:
    """Copy report and bundle to ``reports/<run id>``, ``models/<run id>`` and both ``latest``."""
    metrics = storage.read_json(f"{evaluation.folder}/metrics.json")
    search = storage.read_json(f"{detector.folder}/search.json")
    run = {"run_id": run_id, "evaluation": evaluation.folder, "detector": detector.folder}
    bundle = {
        "run_id": run_id,
        "backbone": settings.features.backbone,
        "input_size": settings.features.input_size,
        "image_size": settings.data.image_size,
        "threshold": search["threshold"],
        "score": "SVM decision value; >= threshold means inpainted",
        "svm_sha256": search["model_sha256"],
        "best_params": search["best_params"],
        "roc_auc": metrics["roc_auc"],
    }
    for name in (run_id, "latest"):
        storage.copy_tree(evaluation.folder, f"reports/{name}")
        storage.write_json(f"reports/{name}/run.json", run)
        save_bundle(storage, detector.folder, f"models/{name}", bundle)
    return {
        "run_id": run_id,
        "report": storage.uri(f"reports/{run_id}"),
        "model": storage.uri(f"models/{run_id}"),
        "metrics": metrics,
    }
