"""What every task shares: the stage cache policy, the retry rule, and the run logs.

Nothing happens when this module is imported. A process that runs the pipeline's flows calls
``prepare_process()`` once, before its first run (every flow module does, when it is imported:
that is also what a worker does before it runs a flow).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from deepfake.config import StorageConfig
from deepfake.hashing import digest_of
from deepfake.progress import add_progress_listener
from deepfake.secrets import redact_logs
from deepfake.stages import CODE_VERSION, StageOutput, dependency_versions, finished
from deepfake.storage import Storage


def prepare_process() -> None:
    """Ready this process to run the pipeline (idempotent): credentials redacted from every log
    record, library logs sent to the Prefect run logs, progress shown as run artifacts, and no
    usage telemetry from a temporary local server."""
    # The temporary local server otherwise logs an ERROR on every offline run when its usage
    # telemetry cannot be sent; set it to true to send it.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # No credential reaches a log line, whichever library writes it (botocore's debug log would).
    redact_logs()
    send_library_logs_to_runs()
    add_progress_listener(_PROGRESS_ARTIFACTS)


# Prefect gives the temporary local server that a run without PREFECT_API_URL starts 20 s to
# answer; on two CPU cores it takes about that long (21 s measured), so a newcomer's first run
# could fail with "Timed out while attempting to connect to ephemeral Prefect API server".
LOCAL_SERVER_STARTUP_SECONDS = 120


@contextmanager
def patient_local_server() -> Iterator[None]:
    """Within it, a flow run that starts Prefect's temporary local server waits up to
    ``LOCAL_SERVER_STARTUP_SECONDS`` for it to answer, unless the environment sets
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS."""
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        yield
        return
    wait = max(
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), LOCAL_SERVER_STARTUP_SECONDS
    )
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: wait}):
        yield


def _inside_a_run(record: logging.LogRecord) -> bool:
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def send_library_logs_to_runs() -> None:
    """Library log lines (INFO and above) go to the Prefect run logs of the task or flow that
    wrote them, as well as to the console, in any process that runs these tasks: a CLI run, a
    worker's flow-run process, a container.

    Prefect's own setting for this (PREFECT_LOGGING_EXTRA_LOGGERS) is read once, when prefect is
    imported, which is before any of our code runs in a worker; so the handler is attached here.
    Lines written outside any run (a command line's checks) stay on the console only.
    """
    logger = logging.getLogger("deepfake")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if any(isinstance(h, APILogHandler) for h in logger.handlers):
        return
    handler = APILogHandler(level=logging.INFO)
    handler.addFilter(_inside_a_run)
    logger.addHandler(handler)


class ProgressArtifacts:
    """Every long loop of the library (``deepfake.progress.Progress``) as a progress artifact of
    the task or flow run it runs in (``<what>-progress``, e.g. ``features-progress``), moved at
    most every ``every`` seconds and always at the end, so that it stands at 100 % when done."""

    def __init__(self, every: float = 2.0) -> None:
        self.every = every
        self._artifacts: dict[tuple[str, str], tuple[UUID, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, what: str, done: int, total: int) -> None:
        try:
            self._report(what, done, total)
        except Exception as exc:  # progress is a courtesy: it never stops the work
            logging.getLogger("deepfake").debug("progress artifact not updated: %s", exc)

    def _report(self, what: str, done: int, total: int) -> None:
        run = TaskRunContext.get() or FlowRunContext.get()
        if run is None:
            return
        run_id = str(run.task_run.id if isinstance(run, TaskRunContext) else run.flow_run.id)
        share = 100.0 * done / total if total else 100.0
        now = time.monotonic()
        with self._lock:
            known = self._artifacts.get((run_id, what))
            if known is None:
                key = re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-") + "-progress"
                artifact = create_progress_artifact(
                    progress=share, key=key, description=f"{what}: share of the work done (%)"
                )
                self._artifacts[(run_id, what)] = (artifact, now)
            elif done >= total or now - known[1] >= self.every:
                update_progress_artifact(known[0], progress=share)
                self._artifacts[(run_id, what)] = (known[0], now)


_PROGRESS_ARTIFACTS = ProgressArtifacts()

_KEYED = INPUTS + TASK_SOURCE


@dataclass
class StageCache(CachePolicy):
    """Keyed on the task's inputs and code (the library's too) and the installed versions of the
    packages the project depends on, and trusted only while its outputs still exist.

    A cached StageOutput whose folder lost its manifest or any listed file is a stale cache
    entry: the policy then returns no key, the task body runs and redoes the missing work.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = _KEYED.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is not None:  # library code and the packages it runs on count too
            key = digest_of([key, CODE_VERSION, dependency_versions()])
        store = task_ctx.result_store
        if key is None or store is None or not store.exists(key):
            return key
        try:
            cached = store.read(key).result
        except Exception:
            return None
        if isinstance(cached, StageOutput):
            storage = Storage.open(inputs["storage"])
            if finished(storage, cached.stage, cached.folder) is None:
                return None
        return key


# Errors that a retry can cure: storage hiccups, dropped connections, a busy GPU.
TRANSIENT = (OSError, ConnectionError, TimeoutError)


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only transient errors are retried; bad input fails at once."""
    try:
        state.result()
    except TRANSIENT as exc:
        return not isinstance(exc, FileNotFoundError | PermissionError)
    except Exception:
        return False
    return False


TASK_DEFAULTS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": is_transient,
    "cache_policy": StageCache(),
    "persist_result": True,
    # Results are small pydantic models: JSON, so reading a cached result never unpickles.
    "result_serializer": "json",
}


def result_storage_for(storage: StorageConfig) -> WritableFileSystem:
    """Prefect task results beside the pipeline's own files, so any worker finds them.

    Saved as a block (Prefect requires that), named after the storage root; it holds the root,
    endpoint and retry options, never credentials.
    """
    opened = Storage.open(storage)
    basepath = f"{opened.root}/prefect-results"
    block: WritableFileSystem
    if opened.is_local:
        block = LocalFileSystem(basepath=basepath)
    else:
        block = RemoteFileSystem(basepath=basepath, settings=opened.options)
    block.save(f"deepfake-results-{digest_of(basepath)[:12]}", overwrite=True)
    return block
