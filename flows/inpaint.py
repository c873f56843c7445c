"""Inpainting as batched subflows: plan, one ``inpaint-batch`` flow run per batch, collect.

A batch is the unit of work a GPU worker takes. Without ``inpaint.deployment`` the batches run as
subflows of the pipeline, one after another. With it, every batch is sent to that deployment with
``run_deployment`` (so N workers on N machines share the work), and the pipeline waits for all of
them; a batch whose flow run fails or crashes is sent again, to whichever worker is free, up to
``inpaint.batch_attempts`` runs. A batch whose worker dies (killed, out of memory, machine lost)
stops sending heartbeats (every batch run is sent with them on, whatever its deployment's job
variables say): an automation on the server marks such a run Crashed after ``inpaint.lost_after``
seconds, which makes it a crashed batch like any other. Every run carries its attempt number, and
only the latest attempt of a batch may write (a run taken for lost that is still alive stops before
writing: fencing); a run not finished ``inpaint.batch_deadline`` seconds after it was sent is
cancelled and counts as a failed attempt; each submission has an idempotency key, so that a pipeline
that is itself retried finds its batch runs instead of sending them twice.

Run alone, this module inpaints one batch of an existing plan (what a deployment run does):

    python flows/inpaint.py --storage ./storage --plan '<InpaintPlan JSON>' --batch 3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.filesystems import WritableFileSystem
from prefect.runtime import flow_run
from prefect.states import Cancelled

from deepfake.config import InpaintConfig, StorageConfig
from deepfake.hashing import digest_of
from deepfake.inpaint.stage import InpaintPlan, run_planned_batch, send_attempt
from deepfake.stages import StageOutput
from deepfake.storage import Storage
from tasks._common import patient_local_server, prepare_process
from tasks.inpaint import collect_inpainting, plan_inpainting

# Whoever runs these flows (this command, a worker) first readies the process: logs redacted
# and sent to the run, progress as artifacts.
prepare_process()


@flow(name="inpaint-batch", retries=2, retry_delay_seconds=10, result_serializer="json")
def inpaint_batch(
    storage: StorageConfig, plan: InpaintPlan, index: int, attempt: int | None = None
) -> dict[str, Any]:
    """Inpaint batch ``index`` of ``plan``: images written atomically, then the batch manifest.
    ``attempt`` (set when the pipeline sends batches to a deployment) lets only the latest
    attempt of a batch write."""
    stats = run_planned_batch(Storage.open(storage), plan, index, attempt)
    get_run_logger().info(
        "batch %d/%d: %d images in %.1f s, %.2f images/s (%s)",
        index + 1, plan.batches, stats["images"], stats["seconds"], stats["images_per_s"],
        plan.cfg.backend,
    )  # fmt: skip
    return {k: v for k, v in stats.items() if k != "failed"} | {"failed": len(stats["failed"])}


# Every batch run is sent with a heartbeat every HEARTBEAT seconds (Prefect's minimum is 30); one
# silent for inpaint.lost_after seconds (no heartbeat, no new state) has lost its worker.
HEARTBEAT = 30
LOST_AFTER: int = InpaintConfig.model_fields["lost_after"].default


def _submit(
    deployment: str, storage: StorageConfig, plan: InpaintPlan, index: int, attempt: int
) -> UUID:
    """Send attempt ``attempt`` of batch ``index``; its run, or the one an earlier call from the
    same pipeline run made for the same storage, plan, batch and attempt (the idempotency key:
    a pipeline run that is retried finds its batch runs; another pipeline run sends its own)."""
    send_attempt(Storage.open(storage), plan, index, attempt)
    key = digest_of([str(flow_run.id), storage.root, plan.plan_file, index, attempt])
    run = run_deployment(
        name=deployment,
        parameters={
            "storage": storage.model_dump(mode="json"),
            "plan": plan.model_dump(mode="json"),
            "index": index,
            "attempt": attempt,
        },
        timeout=0,  # submit only; the loop below waits for all batches together
        flow_run_name=f"batch-{index + 1:04d}-of-{plan.batches:04d}",
        idempotency_key=key,
        # Heartbeats whatever the deployment's job variables say: the lost-run automation
        # watches for them.
        job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT)}},
    )
    return run.id


def watch_for_lost_runs(deployment_id: UUID, deployment: str, lost_after: int = LOST_AFTER) -> None:
    """Make sure the server marks a run of ``deployment`` Crashed when its worker is gone.

    An automation (made once per deployment and window, found by name after that): a flow run
    of this deployment that has been Pending, Running or sent a heartbeat, and then sends
    neither a heartbeat nor a new state for ``lost_after`` seconds, is set to Crashed. A run that
    keeps sending heartbeats is never touched, however long it runs.
    """
    window = "" if lost_after == LOST_AFTER else f" after {lost_after} s"
    name = f"deepfake: lost runs of {deployment} are crashed{window}"
    try:
        Automation.read(name=name)
        return
    except ValueError:  # not made yet
        pass
    alive = {"prefect.flow-run.heartbeat", "prefect.flow-run.Pending", "prefect.flow-run.Running"}
    ended = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    Automation(
        name=name,
        description="Inpainting batches whose worker died are marked Crashed, so that the "
        "pipeline sends them again.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            after=alive,
            expect=alive | ended,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=lost_after),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {lost_after} s: the worker running it is gone",
            )
        ],
    ).create()


class BatchesFailed(RuntimeError):
    """A batch failed on every attempt: the stage gives up."""


def run_batches_on(
    deployment: str, storage: StorageConfig, plan: InpaintPlan, progress: UUID | None,
    poll: float = 2.0,
) -> None:  # fmt: skip
    """Every batch as a run of ``deployment``; waits for all, sending again the ones that fail,
    crash or pass ``inpaint.batch_deadline``, up to ``inpaint.batch_attempts`` runs each."""
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        watch_for_lost_runs(deployment_id, deployment, plan.cfg.lost_after)
    pending = {i: (_submit(deployment, storage, plan, i, 1), time.monotonic())
               for i in range(plan.batches)}  # fmt: skip
    attempts = dict.fromkeys(pending, 1)
    logger.info("sent %d inpainting batches to deployment %s", plan.batches, deployment)
    done = 0
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(poll)
            for index, (run_id, sent) in list(pending.items()):
                state = client.read_flow_run(run_id).state
                late = time.monotonic() - sent > plan.cfg.batch_deadline
                if state is not None and not state.is_final() and late:
                    why = f"not finished {plan.cfg.batch_deadline:.0f} s after it was sent"
                    client.set_flow_run_state(run_id, Cancelled(message=why), force=True)
                    state = Cancelled(message=why)
                if state is None or not state.is_final():
                    continue
                del pending[index]
                if state.is_completed():
                    done += 1
                    if progress is not None:
                        update_progress_artifact(progress, progress=100.0 * done / plan.batches)
                    continue
                if attempts[index] >= plan.cfg.batch_attempts:
                    why = (
                        f"inpainting batch {index} failed {attempts[index]} times, the most "
                        f"inpaint.batch_attempts allows (last run {run_id}: {state.name}: "
                        f"{state.message})"
                    )
                    for other, _ in pending.values():  # no worker should take these up now
                        client.set_flow_run_state(
                            other, Cancelled(message=f"the stage gave up: {why}"), force=True
                        )
                    raise BatchesFailed(why)
                attempts[index] += 1
                logger.warning(
                    "batch %d ended %s; sending it again (attempt %d/%d)",
                    index, state.name, attempts[index], plan.cfg.batch_attempts,
                )  # fmt: skip
                run = _submit(deployment, storage, plan, index, attempts[index])
                pending[index] = (run, time.monotonic())


def inpaint_stage(
    storage: StorageConfig,
    cfg: InpaintConfig,
    sources: StageOutput,
    masks: StageOutput,
    results: WritableFileSystem | None = None,
) -> StageOutput:
    """Plan, run the batches (here or on a deployment's workers), collect; with progress.
    ``results`` is where the planning and collecting tasks keep their results."""
    plan = plan_inpainting.with_options(result_storage=results)(storage, cfg, sources, masks)
    if plan.batches:
        progress = create_progress_artifact(
            progress=0.0, key="inpainting-progress", description="Inpainted batches (%)"
        )
        if cfg.deployment:
            run_batches_on(cfg.deployment, storage, plan, progress)
        else:
            for index in range(plan.batches):
                inpaint_batch(storage, plan, index)
                update_progress_artifact(progress, progress=100.0 * (index + 1) / plan.batches)
    return collect_inpainting.with_options(result_storage=results)(
        storage, plan.cfg, plan.folder, sources
    )


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
    with patient_local_server():
        stats = inpaint_batch(storage, InpaintPlan.model_validate_json(args.plan), args.batch)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
