"""What every task shares: the stage cache policy and the retry rule."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem

from deepfake.config import StorageConfig, digest_of
from deepfake.secrets import redact_logs
from deepfake.stages import CODE_VERSION, StageOutput, finished
from deepfake.storage import Storage

# Library progress lines go to the Prefect run logs as well as the console.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "deepfake")
# The temporary local server otherwise logs an ERROR on every offline run when its usage
# telemetry cannot be sent; set it to true to send it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# No credential reaches a log line, whichever library writes it (botocore's debug log would).
redact_logs()

_KEYED = INPUTS + TASK_SOURCE


@dataclass
class StageCache(CachePolicy):
    """Keyed on the task's inputs and code, and trusted only while its outputs still exist.

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
        if key is not None:  # library code counts too, not only the thin task's own source
            key = digest_of([key, CODE_VERSION])
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
    store = Storage.open(storage)
    basepath = f"{store.root}/prefect-results"
    block: WritableFileSystem
    if store.is_local:
        block = LocalFileSystem(basepath=basepath)
    else:
        block = RemoteFileSystem(basepath=basepath, settings=store.options)
    block.save(f"deepfake-results-{digest_of(basepath)[:12]}", overwrite=True)
    return block
