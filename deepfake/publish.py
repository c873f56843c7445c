"""Publishing a run: its report and detector bundle under the run id, and, when promoted, the
bundle made the live one (``models/latest``) and the report copied to ``reports/latest``.

Promotion is guarded. The run's bundle is written whole to ``models/<run id>/`` first and then
loaded again and made to score some of its own test images, which must get the scores the
evaluation saw; only then does one atomic write of ``models/latest.json`` make it live. A kill at
any point leaves the previous detector live and loadable. With ``promote="if_better"`` (the
default) the new detector goes live only if its held-out ROC-AUC is at least the current one's on
the same test records; a comparison that cannot be made, or a current detector that cannot be
loaded, stops the promotion with an error (``promote="always"`` replaces a broken one). The
figures and the decision go into ``promotion.json`` and the report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Literal

import numpy as np

from deepfake.config import Settings
from deepfake.detector.bundle import (
    LATEST,
    bundle_files,
    bundle_meta,
    check_run_id,
    live_bundle,
    point_latest,
    verified_files,
)
from deepfake.evaluate.outputs import REPORT_FILE, evaluation_files, evaluation_metrics
from deepfake.evaluate.report import embed_images
from deepfake.stages import StageOutput
from deepfake.storage import Storage

log = logging.getLogger("deepfake")

Promote = Literal["always", "if_better"]
MODELS, REPORTS = "models", "reports"
CHECKED_IMAGES = 8  # test images the published bundle must score as the evaluation did


class PromotionError(RuntimeError):
    """The new detector was published under its run id but not made live, for a reason that
    needs a person (the comparison could not be made, the current detector is broken, the
    published bundle does not score as evaluated)."""


def new_run_id(settings: Settings) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{settings.digest()[:8]}"


def promotion_decision(
    storage: Storage, detector: StageOutput, new_auc: float, promote: Promote, device: str
) -> dict[str, Any]:
    """Whether the new detector becomes the live one, and why (the current one is loaded on
    ``device`` to score the same test records). ``error`` is set when no decision could be
    made: the promotion stops there."""
    if promote == "always":
        return {"promote": True, "policy": promote, "reason": "policy: always promote"}
    try:
        live = live_bundle(storage, MODELS)
        if live is None:
            return {"promote": True, "policy": promote, "reason": "there is no current detector"}
        # Its files read and checked against their digests once. The same files as the new
        # detector's (a rerun that changed nothing) were loaded and checked when they went live:
        # such a rerun loads neither torch nor scikit-learn.
        meta, files = verified_files(storage, live)
        current = None
        if not _same_detector(meta, bundle_meta(storage, detector.folder)):
            from deepfake.detector.bundle import Detector, loaded_bundle

            current = Detector.of(loaded_bundle(storage.uri(live), meta, files), device)
    except Exception as exc:  # whatever is wrong with it, a person must look
        reason = (
            f"the current detector ({storage.uri(f'{MODELS}/{LATEST}')}) cannot be loaded: "
            f"{exc}; replace it with promote=always (--promote always)"
        )
        return {"promote": False, "policy": promote, "error": True, "reason": reason}
    if current is None:
        reason = f"the same detector as the current one ({storage.uri(live)})"
        return {"promote": True, "policy": promote, "reason": reason, "same": True}
    from sklearn.metrics import roc_auc_score

    test = storage.read_parquet(detector.manifest).query("split == 'test'")
    try:
        scores = current.score_uris(storage, list(test["uri"]))
        current_auc = float(roc_auc_score(test["label"], scores))
    except Exception as exc:
        reason = f"the comparison with the current detector failed: {type(exc).__name__}: {exc}"
        return {"promote": False, "policy": promote, "error": True, "reason": reason}
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


def _same_detector(current: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when two bundles' metadata describe the same detector (the same model and backbone
    files by digest, the same threshold and calibrations), whichever run published them: a
    rerun that changed nothing needs no comparison."""
    published = {"run_id", "roc_auc"}
    return {k: v for k, v in current.items() if k not in published} == {
        k: v for k, v in new.items() if k not in published
    }


def check_published(
    storage: Storage, folder: str, detector: StageOutput, device: str, count: int = CHECKED_IMAGES
) -> None:
    """Load the bundle in ``folder`` as a user would and score ``count`` of its test images:
    ``PromotionError`` unless they get the scores the detector stage gave them."""
    from deepfake.detector.bundle import Detector

    test = storage.read_parquet(detector.manifest).query("split == 'test'").head(count)
    try:
        got = Detector.load(storage, folder, device).score_uris(storage, list(test["uri"]))
    except Exception as exc:
        raise PromotionError(f"{storage.uri(folder)} does not load: {exc}") from exc
    want = test["score"].to_numpy()
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3):
        raise PromotionError(
            f"{storage.uri(folder)} scores its test images {np.round(got, 4).tolist()}, the "
            f"evaluation {np.round(want, 4).tolist()}: not made live"
        )


def publish_run(
    storage: Storage,
    run_id: str,
    evaluation: StageOutput,
    detector: StageOutput,
    promote: Promote = "if_better",
    device: str = "auto",
) -> dict[str, Any]:
    """Write report and bundle to ``reports/<run id>`` and ``models/<run id>``; when promoted,
    check the bundle and make it live, then copy the report to ``reports/latest``. ``device``
    is where detectors are loaded for the comparison and the check. Writes only under those
    folders and the pointer, and deletes nothing."""
    check_run_id(run_id)
    metrics = evaluation_metrics(storage, evaluation)
    decision = promotion_decision(storage, detector, metrics["roc_auc"], promote, device)
    log.info("promotion of run %s: %s (%s)", run_id, decision["promote"], decision["reason"])
    run = {"run_id": run_id, "evaluation": evaluation.folder, "detector": detector.folder}
    reports = evaluation_files(storage, evaluation)
    report = reports[REPORT_FILE].decode()
    report += f"\n## Promotion\n\n{'Promoted' if decision['promote'] else 'Not promoted'} to "
    report += f"`{MODELS}/{LATEST}`: {decision['reason']}.\n"
    reports |= {
        "run.json": _json(run),
        "promotion.json": _json(decision),
        REPORT_FILE: report.encode(),
    }
    bundle = bundle_files(
        storage, detector.folder, {"run_id": run_id, "roc_auc": metrics["roc_auc"]}
    )
    # The bundle first: once the report says where it is, it is there.
    storage.write_many({f"{MODELS}/{run_id}/{name}": data for name, data in bundle.items()})
    storage.write_many({f"{REPORTS}/{run_id}/{name}": data for name, data in reports.items()})
    if decision.get("error"):
        log.error("promotion of run %s stopped: %s", run_id, decision["reason"])
        raise PromotionError(
            f"run {run_id} published to {storage.uri(f'{MODELS}/{run_id}')} but not made live: "
            f"{decision['reason']}"
        )
    if decision["promote"]:
        if not decision.get("same"):  # the same files as the live bundle: checked when it went live
            check_published(storage, f"{MODELS}/{run_id}", detector, device)
        point_latest(storage, MODELS, run_id)
        storage.write_many({f"{REPORTS}/{LATEST}/{name}": data for name, data in reports.items()})
        _follow_the_live_run(storage, run_id)
    return {
        "run_id": run_id,
        "report": storage.uri(f"{REPORTS}/{run_id}"),
        "model": storage.uri(f"{MODELS}/{run_id}"),
        "promoted": decision["promote"],
        "metrics": metrics,
    }


def _follow_the_live_run(storage: Storage, run_id: str) -> None:
    """Make ``reports/latest`` the live run's report. A run publishing at the same time may
    have gone live after this one and copied its report before this one did: then the live
    run's report is copied again (whoever copies last reads the pointer last)."""
    live = live_bundle(storage, MODELS)
    if live is None or live == f"{MODELS}/{run_id}":
        return
    other = live.rsplit("/", 1)[1]
    names = sorted(storage.list_files(f"{REPORTS}/{other}"))
    found = storage.read_many([f"{REPORTS}/{other}/{name}" for name in names])
    storage.write_many({f"{REPORTS}/{LATEST}/{name}": data
                        for name, data in zip(names, found, strict=True)
                        if isinstance(data, bytes)})  # fmt: skip
    log.info("publish: run %s went live meanwhile; reports/latest is its report", other)


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
    latest = f" (live: `{MODELS}/{LATEST}`)" if summary["promoted"] else " (not promoted)"
    return (
        f"{report}\n## Where this run is\n\n- Report and plots: `{summary['report']}`\n"
        f"- Detector bundle: `{summary['model']}`{latest}\n"
    )
