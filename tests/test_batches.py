"""Batches sent to a deployment: heartbeats on, attempts fenced, idempotent submissions, a deadline
for runs that never finish, and giving up after ``inpaint.batch_attempts`` (the real Prefect API
of the test server; no worker takes these runs, the test plays the worker's part)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.flow_engine import FlowRunEngine
from prefect.states import Completed, Failed, Running

from deepfake.config import DataConfig, InpaintConfig, MaskConfig, StorageConfig
from deepfake.inpaint.stage import StaleAttempt, plan, run_planned_batch, send_attempt
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.storage import Storage
from flows.inpaint import BatchesFailed, _submit, inpaint_batch, run_batches_on, watch_for_lost_runs

POOL = "batches-test"


@pytest.fixture(scope="module")
def deployment(prefect_server) -> str:
    """A deployment of inpaint-batch in a process pool that no worker serves."""
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = client.create_flow_from_name("inpaint-batch")
        client.create_deployment(flow_id=flow_id, name="no-workers", work_pool_name=POOL,
                                 entrypoint="flows/inpaint.py:inpaint_batch")  # fmt: skip
    return "inpaint-batch/no-workers"


@pytest.fixture
def planned(tmp_path: Path):
    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=3, image_size=48))
    masks = make_masks(store, MaskConfig(types=("random",)), sources)
    cfg = InpaintConfig(backend="classical", batch_size=2, batch_attempts=2)
    return StorageConfig(root=str(tmp_path)), plan(store, cfg, sources, masks)


def runs_of(deployment: str, storage: StorageConfig | None = None) -> list:
    """The deployment's runs (of this test's storage, when given)."""
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
        )
    return [r for r in runs if storage is None or r.parameters["storage"]["root"] == storage.root]


def test_a_batch_that_fails_every_attempt_gives_up(deployment, planned) -> None:
    storage, made = planned
    stop = threading.Event()
    failed: set = set()

    def worker_that_fails() -> None:  # plays a worker whose every run fails
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                for run in runs_of(deployment, storage):
                    if run.id not in failed and run.parameters["index"] == 0:
                        client.set_flow_run_state(run.id, Failed(message="boom"), force=True)
                        failed.add(run.id)
                time.sleep(0.2)

    @flow
    def pipeline_part() -> None:
        run_batches_on(deployment, storage, made, None, poll=0.2)

    thread = threading.Thread(target=worker_that_fails, daemon=True)
    thread.start()
    try:
        with pytest.raises(BatchesFailed, match=r"failed 2 times.*batch_attempts.*boom"):
            pipeline_part()
    finally:
        stop.set()
        thread.join()
    ours = runs_of(deployment, storage)
    first_batch = sorted(r.parameters["attempt"] for r in ours if r.parameters["index"] == 0)
    assert first_batch == [1, 2]  # sent twice, then given up
    others = [r for r in ours if r.parameters["index"] != 0]
    assert others and {r.state.name for r in others} == {"Cancelled"}  # none left for a worker
    assert "the stage gave up" in others[0].state.message
    for run in ours:  # every run sends heartbeats, whatever the deployment says
        assert run.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"


def test_a_run_that_never_finishes_is_cancelled_at_the_deadline(deployment, planned) -> None:
    storage, made = planned
    made = made.model_copy(update={"cfg": made.cfg.model_copy(update={"batch_deadline": 1.0})})

    @flow
    def pipeline_part() -> None:
        run_batches_on(deployment, storage, made, None, poll=0.2)

    started = time.monotonic()
    with pytest.raises(BatchesFailed, match="not finished 1 s after it was sent"):
        pipeline_part()  # no worker ever takes them
    assert time.monotonic() - started < 60
    ours = runs_of(deployment, storage)
    assert ours and {r.state.name for r in ours} == {"Cancelled"}


def test_the_same_submission_is_one_run(deployment, planned) -> None:
    storage, made = planned

    @flow
    def twice() -> tuple:
        return (_submit(deployment, storage, made, 0, 1), _submit(deployment, storage, made, 0, 1),
                _submit(deployment, storage, made, 0, 2))  # fmt: skip

    first, again, other = twice()
    assert first == again and other != first


def test_only_the_latest_attempt_of_a_batch_writes(planned) -> None:
    storage, made = planned
    store = Storage.open(storage)
    send_attempt(store, made, 0, 1)
    send_attempt(store, made, 0, 2)  # sent again: attempt 1 was taken for lost
    with pytest.raises(StaleAttempt, match="attempt 2 has been sent since"):
        run_planned_batch(store, made, 0, attempt=1)
    assert not store.list_files(f"{made.folder}/batches")
    assert run_planned_batch(store, made, 0, attempt=2)["images"] == 2
    assert run_planned_batch(store, made, 1)["images"] == 1  # a local run: not fenced


def test_a_run_that_sends_heartbeats_outlives_the_window_and_a_silent_one_is_crashed(
    deployment, planned
) -> None:
    """The lost-run automation on the real server, with a 12 s window (90 s in use): a batch run
    that sends the flow engine's own heartbeats stays Running for more than two windows; one
    that falls silent is Crashed."""
    from prefect.events.worker import EventsWorker

    storage, made = planned
    window = 12
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        watch_for_lost_runs(dep.id, deployment, lost_after=window)
        runs = []
        for index in (0, 1):
            parameters = {
                "storage": storage.model_dump(mode="json"),
                "plan": made.model_dump(mode="json"),
                "index": index,
                "attempt": 1,
            }
            run = client.create_flow_run_from_deployment(dep.id, parameters=parameters)
            client.set_flow_run_state(run.id, Running(), force=True)
            runs.append(client.read_flow_run(run.id))
        healthy, silent = runs
        engine = FlowRunEngine(flow=inpaint_batch, flow_run=healthy)  # the worker's heartbeats
        try:
            end = time.monotonic() + 2.5 * window
            while time.monotonic() < end:
                engine._emit_flow_run_heartbeat()
                EventsWorker.drain_all()
                time.sleep(window / 4)
            states = {name: client.read_flow_run(r.id).state for name, r in
                      (("healthy", healthy), ("silent", silent))}  # fmt: skip
        finally:
            client.set_flow_run_state(healthy.id, Completed(), force=True)
    assert states["healthy"].name == "Running", states
    assert states["silent"].name == "Crashed", states
    assert f"no heartbeat for {window} s" in states["silent"].message
