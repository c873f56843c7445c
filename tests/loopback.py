"""A Prefect server and workers as real processes on loopback, and one run of the pipeline's
deployment on them: `prefect server start`, process work pools, deployments made from
prefect.yaml with `prefect deploy`, three `prefect worker` processes (one for the pipeline, two
sharing the inpainting batches). The session fixtures in conftest.py share them between the
deployment tests and the browser tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.s3_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small, but with every long stage that reports progress: fine-tuning, features, the SVM search
# and the robustness evaluation.
SETTINGS = {
    "data": {"limit": 12, "image_size": 48},
    "masks": {"types": ["random", "ellipse"]},
    "inpaint": {
        "backend": "classical",
        "batch_size": 4,
        "deployment": "inpaint-batch/batch-local",
    },  # fmt: skip
    "features": {"input_size": 64, "finetune_epochs": 1},
    "svm": {"alpha": [0.1], "top_k": [1, 4], "cv_folds": 2},
    # One split, no left-out families: what these tests look at is the deployment and the UI.
    "evaluate": {
        "compare_frozen": False,
        "bootstrap": 50,
        "repeats": 1,
        "leave_one_family_out": False,
    },  # fmt: skip
}


class Stack:
    """A Prefect server and workers as real processes on loopback; stopped on exit."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.home = home
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
            "DEEPFAKE_HOME": str(ROOT),
            "DEEPFAKE_STORAGE": str(home / "storage"),
            "PYTHONUNBUFFERED": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            # The UI, in a browser, asks the API at this address (the default is port 4200).
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{self.port}/api",
        }
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, log: str) -> None:
        handle = (self.home / log).open("w")
        self.procs.append(
            subprocess.Popen(
                [str(BIN / "prefect"), *args],
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with its children
            )  # fmt: skip
        )

    def cli(self, *args: str) -> str:
        command = [str(BIN / "prefect"), "--no-prompt", *args]
        result = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.api}/health", timeout=2)
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError((self.home / "server.log").read_text()[-3000:])

    def stop(self, grace: float = 8.0) -> None:
        stop_groups(self.procs, grace)


def stop_groups(procs: list[subprocess.Popen], grace: float = 8.0) -> None:
    """SIGTERM to every process group (each started with ``start_new_session``) at once, SIGKILL
    to what is left after ``grace``: a worker that takes its time to shut down holds up no test."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_pipeline_deployment(stack: Stack):
    """Pools, deployments and workers on ``stack``, then one run of pipeline-local: (the flow
    run, the workers' logs by file name)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack.cli("work-pool", "create", "local", "--type", "process")
    stack.cli("work-pool", "create", "local-gpu", "--type", "process")
    stack.cli("deploy", "--name", "pipeline-local", "--name", "batch-local")
    stack.start("worker", "start", "--pool", "local", "--name", "cpu-main", log="worker-cpu.log")
    for name in ("gpu-a", "gpu-b"):  # one batch at a time each, like one worker per GPU
        stack.start("worker", "start", "--pool", "local-gpu", "--name", name, "--limit", "1",
                    log=f"worker-{name}.log")  # fmt: skip
    settings = {**SETTINGS, "storage": {"root": str(stack.home / "storage")}}
    with temporary_settings({PREFECT_API_URL: stack.api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("deepfake-pipeline/pipeline-local")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"settings": settings}
        )
        deadline = time.monotonic() + 540
        while time.monotonic() < deadline:
            run = client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                break
            time.sleep(3)
    logs = {p.name: p.read_text() for p in stack.home.glob("worker-*.log")}
    assert run.state is not None and run.state.is_completed(), (run.state, json.dumps(logs)[-4000:])
    return run, logs
