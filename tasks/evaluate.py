from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from deepfake import evaluate  # the stage loads its libraries when it runs, not on import
from deepfake.config import Settings, StorageConfig
from deepfake.evaluate.names import SUMMARY
from deepfake.publish import Promote, publish_run, self_contained_report
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import TASK_DEFAULTS


@task(name="evaluate-detector", **TASK_DEFAULTS)
def evaluate_detector(
    storage: StorageConfig,
    settings: Settings,
    sources: StageOutput,
    dataset: StageOutput,
    features: StageOutput,
    detector: StageOutput,
    baseline: StageOutput | None = None,
) -> StageOutput:
    """Held-out metrics, plots and report (with the frozen-backbone ``baseline``, if given)."""
    return evaluate.evaluate_detector(
        Storage.open(storage), settings, sources, dataset, features, detector, baseline
    )


@task(name="publish-run", **{**TASK_DEFAULTS, "cache_policy": NO_CACHE, "persist_result": False})
def publish(
    storage: StorageConfig,
    run_id: str,
    evaluation: StageOutput,
    detector: StageOutput,
    promote: Promote = "if_better",
    device: str = "auto",
) -> dict[str, Any]:
    """Report and detector under the run id (made the live one when promoted, the current one
    compared on ``device``); UI artifacts."""
    opened = Storage.open(storage)
    summary = publish_run(opened, run_id, evaluation, detector, promote, device)
    metrics = summary["metrics"]
    rows = [{"metric": k, "value": metrics[k]} for k in SUMMARY]
    rows += [
        {"metric": f"roc_auc[{t}]", "value": m["roc_auc"]}
        for t, m in metrics["per_mask_type"].items()
    ]
    if metrics.get("comparison"):
        frozen = metrics["comparison"]["frozen"]
        rows.append({"metric": "roc_auc[frozen backbone]", "value": frozen["roc_auc"]})
    if metrics.get("external", {}).get("n_external_inpainted"):
        rows.append({"metric": "roc_auc[external]", "value": metrics["external"]["roc_auc"]})
    create_table_artifact(
        key="detector-metrics",
        table=rows,
        description=f"Held-out metrics of run {run_id}",
    )
    create_markdown_artifact(
        key="detector-report",
        markdown=self_contained_report(opened, summary),
        description=f"Report of run {run_id}",
    )
    if not opened.is_local:  # a storage the user can open from elsewhere: links to it
        create_link_artifact(key="detector-report-files", link=summary["report"],
                             link_text=f"report of run {run_id}")  # fmt: skip
        create_link_artifact(key="detector-bundle", link=summary["model"],
                             link_text=f"detector of run {run_id}")  # fmt: skip
    return {k: v for k, v in summary.items() if k != "metrics"} | {k: metrics[k] for k in SUMMARY}
