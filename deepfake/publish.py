"""Publishing a run: its report and detector bundle under the run id and under ``latest``.

With ``promote="if_better"`` (scheduled retraining) the new detector replaces ``models/latest``
only if its held-out ROC-AUC is at least the current detector's on the same test records; both
figures and the decision go into ``promotion.json`` and the report.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Literal

from sklearn.metrics import roc_auc_score

from deepfake.config import Settings
from deepfake.predict import BUNDLE_FILE, Detector, save_bundle
from deepfake.stages import StageOutput
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

Promote = Literal["always", "if_better"]


def new_run_id(settings: Settings) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{settings.digest()[:8]}"


def promotion_decision(
    storage: Storage, settings: Settings, detector: StageOutput, new_auc: float, promote: Promote
) -> dict[str, Any]:
    """Whether the new detector becomes ``models/latest``, and why."""
    if promote == "always":
        return {"promote": True, "policy": promote, "reason": "policy: always promote"}
    if not storage.exists(f"models/latest/{BUNDLE_FILE}"):
        return {"promote": True, "policy": promote, "reason": "there is no current detector"}
    try:
        current = Detector.load(storage, "models/latest", settings.features.device)
    except Exception as exc:  # a broken current bundle must not block a sound new one
        return {"promote": True, "policy": promote, "reason": f"current detector unusable: {exc}"}
    test = storage.read_parquet(detector.manifest).query("split == 'test'")
    try:
        scores = current.score_uris(storage, list(test["uri"]))
    except (OSError, ValueError) as exc:
        reason = f"test images unreadable for the comparison: {exc}"
        return {"promote": True, "policy": promote, "reason": reason}
    current_auc = float(roc_auc_score(test["label"], scores))
    better = new_auc >= current_auc
    return {
        "promote": better,
        "policy": promote,
        "new_roc_auc": new_auc,
        "current_roc_auc": current_auc,
        "current_run_id": current.meta.get("run_id"),
        "test_records": len(test),
        "reason": (
            f"new ROC-AUC {new_auc:.4f} {'>=' if better else '<'} current {current_auc:.4f} "
            f"on the same {len(test)} test records"
        ),
    }


def publish_run(
    storage: Storage,
    settings: Settings,
    run_id: str,
    evaluation: StageOutput,
    detector: StageOutput,
    promote: Promote = "always",
) -> dict[str, Any]:
    """Copy report and bundle to ``reports/<run id>``, ``models/<run id>`` and, when promoted,
    ``reports/latest`` and ``models/latest``."""
    metrics = storage.read_json(f"{evaluation.folder}/metrics.json")
    decision = promotion_decision(storage, settings, detector, metrics["roc_auc"], promote)
    log.info("promotion of run %s: %s (%s)", run_id, decision["promote"], decision["reason"])
    run = {"run_id": run_id, "evaluation": evaluation.folder, "detector": detector.folder}
    bundle = {"run_id": run_id, "roc_auc": metrics["roc_auc"]}
    report = storage.read_bytes(f"{evaluation.folder}/report.md").decode()
    report += f"\n## Promotion\n\n{'Promoted' if decision['promote'] else 'Not promoted'} to "
    report += f"`models/latest`: {decision['reason']}.\n"
    for name in [run_id, "latest"] if decision["promote"] else [run_id]:
        storage.copy_tree(evaluation.folder, f"reports/{name}")
        storage.write_json(f"reports/{name}/run.json", run)
        storage.write_json(f"reports/{name}/promotion.json", decision)
        storage.write_bytes(f"reports/{name}/report.md", report.encode())
        save_bundle(storage, detector.folder, f"models/{name}", bundle)
    return {
        "run_id": run_id,
        "report": storage.uri(f"reports/{run_id}"),
        "model": storage.uri(f"models/{run_id}"),
        "promoted": decision["promote"],
        "metrics": metrics,
    }
