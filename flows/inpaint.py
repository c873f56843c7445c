"""Inpainting as batched subflows: plan, one ``inpaint-batch`` flow run per batch, collect.

A batch is the unit of work a GPU worker takes. Run alone, this module inpaints one batch of an
existing plan (what a deployment of ``inpaint_batch`` does):

    python flows/inpaint.py --storage ./storage --plan '<InpaintPlan JSON>' --batch 3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from deepfake.config import InpaintConfig, StorageConfig
from deepfake.inpaint import InpaintPlan, run_planned_batch
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks.inpaint import collect_inpainting, plan_inpainting


@flow(name="inpaint-batch", retries=2, retry_delay_seconds=10, result_serializer="json")
def inpaint_batch(storage: StorageConfig, plan: InpaintPlan, index: int) -> dict[str, Any]:
    """Inpaint batch ``index`` of ``plan``: images written atomically, then the batch manifest."""
    stats = run_planned_batch(Storage.open(storage), plan, index)
    get_run_logger().info(
        "batch %d/%d: %d images in %.1f s, %.2f images/s (%s)",
        index + 1, plan.batches, stats["images"], stats["seconds"], stats["images_per_s"],
        plan.cfg.backend,
    )  # fmt: skip
    return {k: v for k, v in stats.items() if k != "failed"} | {"failed": len(stats["failed"])}


def inpaint_stage(
    storage: StorageConfig, cfg: InpaintConfig, sources: StageOutput, masks: StageOutput
) -> StageOutput:
    """Plan, run the batches as subflows with a progress artifact, collect."""
    plan = plan_inpainting(storage, cfg, sources, masks)
    if plan.batches:
        progress = create_progress_artifact(
            progress=0.0, key="inpainting-progress", description="Inpainted batches (%)"
        )
        for index in range(plan.batches):
            inpaint_batch(storage, plan, index)
            update_progress_artifact(progress, progress=100.0 * (index + 1) / plan.batches)
    return collect_inpainting(storage, plan.cfg, plan.folder, sources)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python flows/inpaint.py", description="Inpaint one batch of an inpainting plan."
    )
    parser.add_argument("--storage", required=True, help="storage root (folder or s3:// URL)")
    parser.add_argument("--plan", required=True, help="InpaintPlan as JSON (from plan-inpainting)")
    parser.add_argument("--batch", type=int, required=True, help="batch index, from 0")
    args = parser.parse_args(argv)
    logging.getLogger("deepfake").setLevel(logging.INFO)
    storage = StorageConfig(root=args.storage)
    stats = inpaint_batch(storage, InpaintPlan.model_validate_json(args.plan), args.batch)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
