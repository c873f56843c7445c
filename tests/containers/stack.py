"""The compose stack of docker/compose.yaml, brought up for the container tests.

What this machine lacks is replaced, and only that (docker/README.md, "Tested here"):
upstream images that cannot be pulled (postgres, prefecthq/prefect, minio/minio, minio/mc) by
the stand-ins of ``compose.standins.yaml``, and the GPU worker's device reservation (there is no
NVIDIA runtime) is dropped. Every secret is random, made for this run.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.s3_server import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STANDINS = {
    "deepfake-standin/postgres:15": HERE / "postgres",
    "deepfake-standin/s3:moto": HERE / "s3",
}
SERVICES = ("check-secrets", "postgres", "prefect-server", "minio", "minio-setup", "cpu-worker",
            "gpu-worker")  # fmt: skip


def sh(*args: str, check: bool = True, timeout: float = 900, **kwargs: Any) -> str:
    """Run a command; its stdout (stderr joined), or an AssertionError with both."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {result.returncode}\n{output[-6000:]}")
    return output


def build_standins() -> None:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    for tag, folder in STANDINS.items():
        sh("docker", "build", "-q", "--network", "host", "-t", tag, str(folder), env=env)


class Stack:
    def __init__(self, home: Path, project: str) -> None:
        self.home, self.project = home, project
        self.port, self.s3_port = free_port(), free_port()
        self.secrets = {
            "POSTGRES_PASSWORD": "pg-" + secrets.token_hex(12) + "@:/%",  # a URL must escape these
            "PREFECT_AUTH_STRING": "admin:pf-" + secrets.token_hex(12),
            "MINIO_ROOT_USER": "root-" + secrets.token_hex(6),
            "MINIO_ROOT_PASSWORD": "rootpw-" + secrets.token_hex(12),
            "S3_WORKER_ACCESS_KEY": "worker-" + secrets.token_hex(6),
            "S3_WORKER_SECRET_KEY": "workerpw-" + secrets.token_hex(12),
        }
        env_file = {
            "POSTGRES_USER": "prefect",
            "MINIO_BUCKET": "deepfake",
            "BIND_ADDRESS": "127.0.0.1",
            "PREFECT_PORT": str(self.port),
            "PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "S3_PREFIX": "pipeline",
            "WORKER_MEMORY": "6g",
            "WORKER_CPUS": "2",
            "MINIO_PORT": str(self.s3_port),
            "MINIO_CONSOLE_PORT": str(free_port()),
            **self.secrets,
        }
        self.env_file = home / ".env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env_file.items()))
        compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
        del compose["services"]["gpu-worker"]["deploy"]  # no GPU here: batches run on the CPU
        for service in compose["services"].values():
            service.pop("build", None)  # the images are built by docker/build.sh
        self.compose_file = home / "compose.yaml"
        self.compose_file.write_text(yaml.safe_dump(compose, sort_keys=False))
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.s3 = f"http://127.0.0.1:{self.s3_port}"
        self.auth = self.secrets["PREFECT_AUTH_STRING"]
        self.network = f"{project}_default"

    # -- compose ---------------------------------------------------------------------------
    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        return sh(
            "docker-compose", "-p", self.project, "--project-directory", str(ROOT / "docker"),
            "-f", str(self.compose_file), "-f", str(HERE / "compose.standins.yaml"),
            "--env-file", str(self.env_file), *args, check=check, timeout=timeout,
        )  # fmt: skip

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def health(self, service: str) -> str:
        state = json.loads(sh("docker", "inspect", self.container(service)))[0]["State"]
        return state.get("Health", {}).get("Status") or state["Status"]

    def wait_healthy(self, services: tuple[str, ...] = SERVICES, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {s: self.health(s) for s in services}
            if all(v in ("healthy", "exited") for v in states.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{states}\n{self.compose('logs', '--tail', '40', check=False)}")
            time.sleep(2)

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")
        self.wait_healthy()

    def down(self) -> None:
        (self.home / "compose-logs.txt").write_text(self.compose("logs", "--no-color", check=False))
        self.compose("down", "-v", "--remove-orphans", check=False)

    # -- clients ---------------------------------------------------------------------------
    def cli_env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PREFECT_API_URL": self.api,
            "PREFECT_API_AUTH_STRING": self.auth,
            "PREFECT_HOME": str(self.home / "prefect-cli"),
            "PREFECT_LOGGING_LEVEL": "INFO",
            "DEEPFAKE_STORAGE": "s3://deepfake/pipeline",
            **extra,
        }

    def prefect(self, *args: str, timeout: float = 600, **extra: str) -> str:
        return sh(str(BIN / "prefect"), "--no-prompt", *args, cwd=ROOT,
                  env=self.cli_env(**extra), timeout=timeout)  # fmt: skip

    @contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: self.api, PREFECT_API_AUTH_STRING: self.auth}),
            get_client(sync_client=True) as client,
        ):
            yield client

    def s3_client(self, who: str = "root"):
        import boto3

        key, secret = (
            ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
            if who == "root"
            else ("S3_WORKER_ACCESS_KEY", "S3_WORKER_SECRET_KEY")
        )
        return boto3.client(
            "s3",
            endpoint_url=self.s3,
            aws_access_key_id=self.secrets[key],
            aws_secret_access_key=self.secrets[secret],
            region_name="us-east-1",
        )

    def objects(self, prefix: str) -> dict[str, str]:
        """Key (relative to ``prefix``) -> ETag (the MD5 of a single-PUT object)."""
        pages = self.s3_client().get_paginator("list_objects_v2")
        return {
            item["Key"][len(prefix) :]: item["ETag"]
            for page in pages.paginate(Bucket="deepfake", Prefix=prefix)
            for item in page.get("Contents", [])
        }

    def worker_env(self) -> dict[str, str]:
        """What a flow-run container needs to reach the stack (as the compose workers have)."""
        return {
            "PREFECT_API_URL": "http://prefect-server:4200/api",
            "PREFECT_API_AUTH_STRING": self.auth,
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            "AWS_ACCESS_KEY_ID": self.secrets["S3_WORKER_ACCESS_KEY"],
            "AWS_SECRET_ACCESS_KEY": self.secrets["S3_WORKER_SECRET_KEY"],
            "AWS_ENDPOINT_URL": "http://minio:9000",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def wait_for_run(client, run_id, timeout: float = 600, poll: float = 2.0):
    """The flow run once its state is final."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run_id} still {run.state and run.state.name}")
        time.sleep(poll)


def runs_of(client, deployment: str, since=None) -> list:
    """Flow runs of a deployment (``flow/name``), oldest first."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    deployment_id = client.read_deployment_by_name(deployment).id
    flow_filter = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)) if since else None
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=flow_filter,
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
    )
