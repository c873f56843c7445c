"""Publishing a run: its report and detector bundle under the run id and under ``latest``.

With ``promote="if_better"`` (scheduled retraining) the new detector replaces ``models/latest``
only if its held-out ROC-AUC is at least the current detector's on the same test records; both
figures and the decision go into ``promotion.json`` and the report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Literal

from sklearn.metrics import roc_auc_score

from deepfake.config import Settings
from deepfake.detector.bundle import Detector, bundle_files, has_bundle
from deepfake.evaluate.report import embed_images
from deepfake.evaluate.stage import REPORT_FILE, evaluation_files, evaluation_metrics
from deepfake.stages import StageOutput
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

Promote = Literal["always", "if_better"]


def new_run_id(settings: Settings) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{settings.digest()[:8]}"


def promotion_decision(
    storage: Storage, detector: StageOutput, new_auc: float, promote: Promote, device: str
) -> dict[str, Any]:
    """Whether the new detector becomes ``models/latest``, and why (the current one is loaded
    on ``device`` to score the same test records)."""
    if promote == "always":
        return {"promote": True, "policy": promote, "reason": "policy: always promote"}
    if not has_bundle(storage, "models/latest"):
        return {"promote": True, "policy": promote, "reason": "there is no current detector"}
    try:
        current = Detector.load(storage, "models/latest", device)
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


def replace_folder(
    storage: Storage, folder: str, files: dict[str, bytes], attempts: int = 5
) -> bool:
    """Make ``folder`` hold exactly ``files`` (name -> bytes), each written atomically, and check
    that it does. A run publishing at the same time can interleave its files with ours; then we
    write ours again. Whoever checks last has left one run's complete set."""
    for attempt in range(1, attempts + 1):
        storage.write_many({f"{folder}/{name}": data for name, data in files.items()})
        for extra in storage.list_files(folder) - set(files):
            storage.delete(f"{folder}/{extra}")
        found = storage.read_many([f"{folder}/{name}" for name in files])
        if all(got == want for got, want in zip(found, files.values(), strict=True)):
            return True
        log.warning("publish: %s changed under us (another run publishing?); rewriting (%d/%d)",
                    storage.uri(folder), attempt, attempts)  # fmt: skip
    log.error("publish: %s is still being rewritten by another run", storage.uri(folder))
    return False


def publish_run(
    storage: Storage,
    run_id: str,
    evaluation: StageOutput,
    detector: StageOutput,
    promote: Promote = "always",
    device: str = "auto",
) -> dict[str, Any]:
    """Copy report and bundle to ``reports/<run id>``, ``models/<run id>`` and, when promoted,
    ``reports/latest`` and ``models/latest`` (each replaced as a whole). ``device`` is where the
    current detector is loaded for the comparison ``promote="if_better"`` makes."""
    metrics = evaluation_metrics(storage, evaluation)
    decision = promotion_decision(storage, detector, metrics["roc_auc"], promote, device)
    log.info("promotion of run %s: %s (%s)", run_id, decision["promote"], decision["reason"])
    run = {"run_id": run_id, "evaluation": evaluation.folder, "detector": detector.folder}
    reports = evaluation_files(storage, evaluation)
    report = reports[REPORT_FILE].decode()
    report += f"\n## Promotion\n\n{'Promoted' if decision['promote'] else 'Not promoted'} to "
    report += f"`models/latest`: {decision['reason']}.\n"
    reports |= {
        "run.json": _json(run),
        "promotion.json": _json(decision),
        REPORT_FILE: report.encode(),
    }
    bundle = bundle_files(
        storage, detector.folder, {"run_id": run_id, "roc_auc": metrics["roc_auc"]}
    )
    for name in [run_id, "latest"] if decision["promote"] else [run_id]:
        replace_folder(storage, f"reports/{name}", reports)
        replace_folder(storage, f"models/{name}", bundle)
    return {
        "run_id": run_id,
        "report": storage.uri(f"reports/{run_id}"),
        "model": storage.uri(f"models/{run_id}"),
        "promoted": decision["promote"],
        "metrics": metrics,
    }


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def self_contained_report(storage: Storage, summary: dict[str, Any]) -> str:
    """The published report with its plots inside it (shrunk) and where the run's files are: for
    a viewer that cannot reach the storage, such as the Prefect UI."""
    folder = f"reports/{summary['run_id']}"
    pngs = sorted(name for name in storage.list_files(folder) if name.endswith(".png"))
    found = storage.read_many([f"{folder}/{name}" for name in pngs])
    images = {name: data for name, data in zip(pngs, found, strict=True) if isinstance(data, bytes)}
    report = embed_images(storage.read_bytes(f"{folder}/{REPORT_FILE}").decode(), images)
    latest = " (also `models/latest`)" if summary["promoted"] else " (not promoted)"
    return (
        f"{report}\n## Where this run is\n\n- Report and plots: `{summary['report']}`\n"
        f"- Detector bundle: `{summary['model']}`{latest}\n"
    )
