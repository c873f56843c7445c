"""The containerized pipeline, for real, against a Docker engine.

The worker images are built (docker/build.sh --local-base), the compose stack is brought up once
for the module (tests/containers/stack.py says what stands in for what this machine lacks), and
then: deployments from prefect.yaml run on the stack with their inpainting batches on the GPU
worker; the GPU worker is killed in the middle of a batch; the pipeline runs on a Docker work
pool; a schedule fires by itself; the server restarts; a worker waits for a server that is not
up yet; and the stack's locks and secrets are checked. .ci/run starts a Docker engine; without
one (and without root to start it), these tests skip and say why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from tests.containers.stack import BIN, ROOT, Stack, build_standins, runs_of, sh, wait_for_run
from tests.loopback import stop_groups

pytestmark = pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "info"], capture_output=True).returncode != 0
    or shutil.which("docker-compose") is None,
    reason="no Docker engine answers here (or docker-compose is missing): .ci/run installs and "
    "starts one as root; see docker/README.md",
)

IMAGES = ("deepfake-worker:cpu", "deepfake-worker:cuda")
TINY_SD2 = "/home/worker/.cache/huggingface/tiny-sd2"
# The offline sample, small: 12 sources x 2 mask types, 3 batches of 8; no fine-tuning.
SMALL = {
    "data": {"limit": 12, "image_size": 48},
    "masks": {"types": ["random", "ellipse"]},
    "features": {"finetune_epochs": 0},
    "svm": {"alpha": [0.1], "top_k": [1, 4], "cv_folds": 2},
    "evaluate": {
        "robustness": False,
        "bootstrap": 50,
        "compare_frozen": False,
        "repeats": 1,
        "leave_one_family_out": False,
        "shortcut_audit": False,
    },
}
# On the stack the batches go to the GPU worker, which runs a tiny SD2 pipeline on its CPU.
SD2_ON_GPU_WORKER = {
    "backend": "sd2", "batch_size": 8, "deployment": "inpaint-batch/batch-stack",
    "lost_after": 60,  # 90 in use; 60 still outlasts one missed heartbeat (every 30 s)
    "sd2": {"model": TINY_SD2, "device": "cpu", "steps": 2, "resolution": 64},
}  # fmt: skip
STAGE_TASKS = {"prepare-sources", "make-masks", "collect-inpainting", "split-dataset",
               "extract-features", "train-detector", "evaluate-detector"}  # fmt: skip


def settings(prefix: str, **inpaint) -> dict:
    """The small run's settings, its storage under the workers' prefix (all they may use)."""
    return {**SMALL, "storage": {"root": f"s3://deepfake/pipeline/{prefix}"}, "inpaint": inpaint}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, float]:
    """Both worker images (reused when built already) and the stand-ins; build seconds."""
    times = {}
    start = time.monotonic()
    sh("bash", str(ROOT / "docker/build.sh"), "--local-base", timeout=1800)
    times["worker images"] = time.monotonic() - start
    start = time.monotonic()
    build_standins()
    times["stand-ins"] = time.monotonic() - start
    print(f"\nbuild seconds: {times}")
    return times


@pytest.fixture(scope="module")
def stack(images, tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    stack = Stack(home, f"deepfaketest{uuid.uuid4().hex[:6]}")
    try:
        stack.up()
        print("\n" + stack.compose("ps"))
        # A tiny random SD2 pipeline where the GPU worker's model cache lives (a volume).
        sh("docker", "exec", stack.container("gpu-worker"), "python3", "-m",
           "deepfake.inpaint.random_pipeline", TINY_SD2)  # fmt: skip
        stack.prefect("deploy", "--name", "pipeline-stack", "--name", "batch-stack")
        yield stack
    finally:
        stack.down()


def test_images_are_pinned_non_root_and_stop_at_once(images) -> None:
    import torch
    import torchvision

    for image in IMAGES:
        probe = "import os, torch, torchvision; print(os.getuid(), torch.__version__, " \
                "torchvision.__version__, torch.version.cuda is not None)"  # fmt: skip
        uid, torch_v, vision_v, cuda_build = sh("docker", "run", "--rm", image, "python3", "-c",
                                                probe).split()  # fmt: skip
        assert uid == "1000", image
        # The versions the tests run with, pinned once in pyproject.toml.
        assert torch_v.split("+")[0] == torch.__version__.split("+")[0], image
        assert vision_v.split("+")[0] == torchvision.__version__.split("+")[0], image
        config = json.loads(sh("docker", "image", "inspect", image))[0]["Config"]
        assert config["Entrypoint"] == ["dumb-init", "--"], image
        # dumb-init forwards SIGTERM: the process ends by it (143), not SIGKILL after the timeout.
        name = f"stoptest-{uuid.uuid4().hex[:6]}"
        sh("docker", "run", "-d", "--name", name, image, "python3", "-c",
           "import time; time.sleep(120)")  # fmt: skip
        sh("docker", "stop", "-t", "20", name)
        code = json.loads(sh("docker", "inspect", name))[0]["State"]["ExitCode"]
        sh("docker", "rm", name)
        assert code == 143, f"{image}: exit {code}"
    # The CUDA image carries a CUDA build of torch; it finds no GPU here, as expected.
    cuda = sh("docker", "run", "--rm", IMAGES[1], "python3", "-c",
              "import torch; print(torch.version.cuda, torch.cuda.is_available())")  # fmt: skip
    assert cuda.split()[-1] == "False" and cuda.split()[0] != "None"


def test_a_code_only_change_reuses_the_dependency_layer(images, tmp_path) -> None:
    copy = tmp_path / "repo"
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for rel in files.split():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    marker = f"# code-only change {uuid.uuid4().hex}\n"
    with (copy / "deepfake/images.py").open("a") as handle:
        handle.write(marker)
    log = sh("bash", str(copy / "docker/build.sh"), "--local-base", "--only", "cpu",
             "--name", "deepfake-codechange")  # fmt: skip
    try:
        steps = log.split("Step ")
        install = next(s for s in steps if "pip install" in s and "requirements.txt" in s)
        assert "Using cache" in install, install
        inside = sh("docker", "run", "--rm", "deepfake-codechange:cpu", "tail", "-n", "1",
                    "/opt/deepfake/deepfake/images.py")  # fmt: skip
        assert inside == marker
    finally:
        sh("docker", "rmi", "deepfake-codechange:cpu", check=False)


def test_stack_is_healthy_and_closed_to_strangers(stack) -> None:
    from botocore.exceptions import ClientError

    assert {s: stack.health(s) for s in ("postgres", "prefect-server", "minio", "cpu-worker",
            "gpu-worker")} == dict.fromkeys(("postgres", "prefect-server", "minio", "cpu-worker",
            "gpu-worker"), "healthy")  # fmt: skip
    for service, port in (("prefect-server", "4200"), ("minio", "9000")):
        bound = sh("docker", "port", stack.container(service), port).split()
        assert bound and all(b.startswith("127.0.0.1:") for b in bound), bound
    # The API refuses a caller without the auth string, and takes one with it.
    request = urllib.request.Request(f"{stack.api}/deployments/filter", data=b"{}", method="POST",
                                     headers={"content-type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    with stack.client() as client:
        assert {d.name for d in client.read_deployments()} >= {"pipeline-stack", "batch-stack"}
    # The workers' S3 user has the pipeline's prefix (get, put, delete, list) and nothing else:
    # not another bucket, not the rest of its own, not the bucket itself (deleting it, changing
    # its policy or versioning).
    root, worker = stack.s3_client("root"), stack.s3_client("worker")
    root.create_bucket(Bucket="someone-else")
    root.put_object(Bucket="someone-else", Key="private.txt", Body=b"not yours")
    root.put_object(Bucket="deepfake", Key="outside/private.txt", Body=b"not the pipeline's")
    worker.put_object(Bucket="deepfake", Key="pipeline/probe.txt", Body=b"mine")
    assert worker.get_object(Bucket="deepfake", Key="pipeline/probe.txt")["Body"].read() == b"mine"
    assert worker.list_objects_v2(Bucket="deepfake", Prefix="pipeline/")["KeyCount"] >= 1
    policy = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::deepfake/*"}]})  # fmt: skip
    for attempt in (
        lambda: worker.get_object(Bucket="someone-else", Key="private.txt"),
        lambda: worker.put_object(Bucket="someone-else", Key="x.txt", Body=b"x"),
        lambda: worker.list_objects_v2(Bucket="someone-else"),
        lambda: worker.get_object(Bucket="deepfake", Key="outside/private.txt"),
        lambda: worker.put_object(Bucket="deepfake", Key="outside/x.txt", Body=b"x"),
        lambda: worker.delete_object(Bucket="deepfake", Key="outside/private.txt"),
        lambda: worker.delete_bucket(Bucket="deepfake"),
        lambda: worker.put_bucket_policy(Bucket="deepfake", Policy=policy),
        lambda: worker.put_bucket_versioning(Bucket="deepfake",
                                             VersioningConfiguration={"Status": "Suspended"}),
    ):  # fmt: skip
        with pytest.raises(ClientError) as denied:
            attempt()
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    worker.delete_object(Bucket="deepfake", Key="pipeline/probe.txt")
    assert root.get_bucket_versioning(Bucket="deepfake")["Status"] == "Enabled"
    assert root.get_object(Bucket="deepfake", Key="outside/private.txt")["Body"].read()


def test_workers_run_with_no_capabilities_a_read_only_root_and_limits(stack) -> None:
    expected = {"Memory": 6 * 2**30, "NanoCpus": 2 * 10**9, "PidsLimit": 512}  # stack's .env
    for service in ("cpu-worker", "gpu-worker"):
        host = json.loads(sh("docker", "inspect", stack.container(service)))[0]["HostConfig"]
        print(f"\n{service} HostConfig: " + json.dumps({k: host.get(k) for k in (
            "CapAdd", "CapDrop", "SecurityOpt", "ReadonlyRootfs", "Memory", "NanoCpus",
            "PidsLimit", "RestartPolicy", "Tmpfs")}))  # fmt: skip
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert "no-new-privileges:true" in host["SecurityOpt"] and host["ReadonlyRootfs"]
        assert {k: host[k] for k in expected} == expected
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        status = sh("docker", "exec", stack.container(service), "cat", "/proc/1/status")
        effective = next(line.split()[1] for line in status.splitlines()
                         if line.startswith("CapEff:"))  # fmt: skip
        assert int(effective, 16) == 0, status  # no capability at all, even for root
        written = sh(
            "docker",
            "exec",
            stack.container(service),
            "sh",
            "-c",
            "touch /opt/deepfake/x 2>&1; touch /tmp/x && echo tmp-ok",
            check=False,
        )
        assert "Read-only file system" in written and "tmp-ok" in written


def test_placeholder_secrets_and_a_public_bind_are_refused_at_start(images, tmp_path) -> None:
    example = (ROOT / "docker" / ".env.example").read_text()
    cases = {
        "placeholder": (example, "still holds the placeholder"),
        "public bind": (example.replace("change-me", "a-long-random-secret-value-")
                        .replace("BIND_ADDRESS=127.0.0.1", "BIND_ADDRESS=0.0.0.0"),
                        "BIND_ADDRESS=0.0.0.0 would serve"),
    }  # fmt: skip
    for case, (env, message) in cases.items():
        home = tmp_path / case.replace(" ", "-")
        home.mkdir()
        stack = Stack(home, f"deepfakerefused{uuid.uuid4().hex[:6]}")
        stack.env_file.write_text(env)
        try:
            stack.compose("up", "-d", "--no-build", "postgres", check=False)
            assert stack.health("check-secrets") == "exited", case
            logs = stack.compose("logs", "--no-color", "check-secrets")
            assert message in logs and "refusing to start" in logs, logs
            state = json.loads(sh("docker", "inspect", stack.container("check-secrets")))[0]
            assert state["State"]["ExitCode"] == 1
            running = sh("docker", "ps", "--filter", f"name={stack.project}_postgres",
                         "--format", "{{.Names}}")  # fmt: skip
            assert running.strip() == "", f"{case}: postgres started anyway"
            assert "change-me-postgres" not in logs  # it says what is wrong, not the value
        finally:
            stack.compose("down", "-v", "--remove-orphans", check=False)


def _run_pipeline(stack: Stack, deployment: str, parameters: dict, timeout: float = 900):
    with stack.client() as client:
        dep = client.read_deployment_by_name(deployment)
        run = client.create_flow_run_from_deployment(dep.id, parameters=parameters)
        return wait_for_run(client, run.id, timeout=timeout)


def _batch_runs(stack: Stack, prefix: str) -> list:
    with stack.client() as client:
        runs = runs_of(client, "inpaint-batch/batch-stack")
    return [
        r for r in runs if r.parameters["storage"]["root"] == f"s3://deepfake/pipeline/{prefix}"
    ]


@pytest.fixture(scope="module")
def reference_run(stack):
    """The undisturbed run on prefix "a", its batches on the GPU worker, made once for the tests
    that name it: what the kill test compares with, the detector the scheduled retraining finds
    live, the results the restarted server finds cached. Any of them runs alone too."""
    run = _run_pipeline(stack, "deepfake-pipeline/pipeline-stack",
                        {"settings": settings("a", **SD2_ON_GPU_WORKER)})  # fmt: skip
    assert run.state.is_completed(), run.state
    return run


def test_pipeline_runs_on_the_stack_with_batches_on_the_gpu_worker(stack, reference_run) -> None:
    run = reference_run
    batches = _batch_runs(stack, "a")
    assert len(batches) == 3 and all(b.state.is_completed() for b in batches)
    gpu_log = sh("docker", "logs", stack.container("gpu-worker"))
    for batch in batches:  # every batch was taken by the GPU worker
        assert f"Worker 'gpu-worker' submitting flow run '{batch.id}'" in gpu_log
    print(f"\nstack run {run.id} ({run.name}) on cpu-worker; batches on gpu-worker: "
          f"{[(b.name, str(b.id)) for b in batches]}")  # fmt: skip
    stored = stack.objects("pipeline/a/")
    folders = ("sources/", "masks/", "inpainted/", "split/", "features/", "detector/",
               "evaluation/", "reports/latest/", "models/", "prefect-results/")  # fmt: skip
    for folder in folders:
        assert any(key.startswith(folder) for key in stored), folder
    assert "reports/latest/metrics.json" in stored and "models/latest.json" in stored
    with stack.client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    assert {"detector-metrics", "detector-report"} <= {a.key for a in artifacts}


def _stage_files(stack: Stack, prefix: str) -> dict[str, str]:
    """Every stage output (not the run-specific reports, copies of the model, Prefect's results,
    the evaluation, whose metrics name the storage root, or the batches' fences, which count
    the attempts), by relative key."""
    skip = ("reports/", "models/", "prefect-results/", "evaluation/")
    return {
        k: v
        for k, v in stack.objects(f"pipeline/{prefix}/").items()
        if not k.startswith(skip) and "/fences/" not in k
    }


def _attempts(stack: Stack, prefix: str) -> list[int]:
    """The attempt each batch's fence allows to write, in key order."""
    s3 = stack.s3_client()
    keys = sorted(k for k in stack.objects(f"pipeline/{prefix}/") if "/fences/" in k)
    return [
        json.loads(s3.get_object(Bucket="deepfake", Key=f"pipeline/{prefix}/{k}")["Body"].read())[
            "attempt"
        ]
        for k in keys
    ]


def test_killing_the_gpu_worker_mid_batch_loses_nothing(stack, reference_run) -> None:
    gpu = stack.container("gpu-worker")
    parameters = {"settings": settings("c", **SD2_ON_GPU_WORKER)}
    with stack.client() as client:
        dep = client.read_deployment_by_name("deepfake-pipeline/pipeline-stack")
        run = client.create_flow_run_from_deployment(dep.id, parameters=parameters)
        deadline = time.monotonic() + 300
        # The batch that is running when the worker is killed: the one seen running, read once.
        while not (running := [b for b in _batch_runs(stack, "c") if b.state.is_running()]):
            assert time.monotonic() < deadline, "no batch started on the GPU worker"
            time.sleep(0.3)
        sh("docker", "kill", gpu)  # in the middle of a batch
        killed = running[0]
        assert not json.loads(sh("docker", "inspect", gpu))[0]["State"]["Running"]
        sh("docker", "start", gpu)  # the worker is back; the lost batch is sent again
        final = wait_for_run(client, run.id, timeout=900)
    assert final.state.is_completed(), final.state
    batches = _batch_runs(stack, "c")
    states = {str(b.id): b.state.name for b in batches}
    assert states[str(killed.id)] == "Crashed", states
    assert len(batches) == 4 and sum(b.state.is_completed() for b in batches) == 3, states
    print(f"\nkilled {gpu} during batch {killed.name} ({killed.id}); batch runs: {states}")
    # Every stage output is the same, by digest, as the undisturbed run's.
    assert _stage_files(stack, "c") == _stage_files(stack, "a")
    # The killed batch was sent a second time, and only that attempt could write.
    assert sorted(_attempts(stack, "c")) == [1, 1, 2], _attempts(stack, "c")


def test_docker_work_pool_runs_the_pipeline_in_a_container(stack, tmp_path) -> None:
    # Credentials as Prefect Secret blocks: the pools' templates name them (docker/
    # pool_template.py), the worker resolves them when it starts a container; neither the
    # deployments nor the pools hold a value.
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    secret_env = {"AWS_ACCESS_KEY_ID": "s3-worker-access-key",
                  "AWS_SECRET_ACCESS_KEY": "s3-worker-secret-key",
                  "PREFECT_API_AUTH_STRING": "prefect-auth-string"}  # fmt: skip
    env = stack.worker_env()
    env_values = dict(env)
    with temporary_settings({PREFECT_API_URL: stack.api, PREFECT_API_AUTH_STRING: stack.auth}):
        for variable, block in secret_env.items():
            Secret(value=env[variable]).save(block, overwrite=True)
        for variable in secret_env:
            del env[variable]
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    chosen = [d for d in config["deployments"] if d["name"] in ("pipeline", "gpu")]
    for deployment in chosen:  # no registry here: the images build.sh made, nothing pushed
        del deployment["build"], deployment["push"]
        kind = "cuda" if deployment["name"] == "gpu" else "cpu"
        variables = deployment["work_pool"]["job_variables"] = dict(
            deployment["work_pool"]["job_variables"]
        )
        variables.update(image=f"deepfake-worker:{kind}", image_pull_policy="Never",
                         networks=[stack.network],
                         env={**variables.get("env", {}), **env})  # fmt: skip
    config["deployments"] = chosen
    derived = tmp_path / "prefect.yaml"
    derived.write_text(yaml.safe_dump(config, sort_keys=False))
    pool_template = tmp_path / "docker-pool.json"
    secrets = [f"--secret={v}={b}" for v, b in secret_env.items()]
    sh(str(BIN / "python"), str(ROOT / "docker/pool_template.py"), *secrets, "--out",
       str(pool_template))  # fmt: skip
    for pool in ("cpu-docker", "gpu-docker"):
        stack.prefect("work-pool", "create", pool, "--type", "docker", "--overwrite",
                      "--base-job-template", str(pool_template))  # fmt: skip
    stack.prefect("deploy", "--prefect-file", str(derived), "--name", "pipeline", "--name", "gpu",
                  DEEPFAKE_IMAGE="unused")  # fmt: skip
    log = (tmp_path / "docker-worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start",
         "--pool", "cpu-docker", "--type", "docker", "--name", "docker-host-worker"],
        cwd=ROOT, env=stack.cli_env(PREFECT_WORKER_QUERY_SECONDS="2"), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        run = _run_pipeline(stack, "deepfake-pipeline/pipeline",
                            {"settings": settings("b", backend="classical")})  # fmt: skip
    finally:
        stop_groups([worker])
    worker_log = (tmp_path / "docker-worker.log").read_text()
    assert run.state.is_completed(), (run.state, worker_log[-3000:])
    containers = json.loads(sh("docker", "ps", "-a", "--filter",
                               f"label=io.prefect.flow-run-id={run.id}", "--format", "{{json .}}")
                            .splitlines()[0])  # fmt: skip
    assert containers["Image"] == "deepfake-worker:cpu"
    print(f"\ndocker pool run {run.id} ({run.name}) by worker docker-host-worker in container "
          f"{containers['Names']} ({containers['Image']})")  # fmt: skip
    assert "reports/latest/metrics.json" in stack.objects("pipeline/b/")
    # What a Docker GPU worker would ask Docker for: every GPU, through the NVIDIA runtime.
    from prefect_docker.worker import DockerWorkerJobConfiguration

    with stack.client() as client:
        pool = client.read_work_pool("gpu-docker")
        gpu = client.read_deployment_by_name("inpaint-batch/gpu")
    with temporary_settings({PREFECT_API_URL: stack.api, PREFECT_API_AUTH_STRING: stack.auth}):
        job = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(
            pool.base_job_template, gpu.job_variables))  # fmt: skip
    # The worker resolves the pool's references into the container's environment.
    assert job.env["AWS_SECRET_ACCESS_KEY"] == env_values["AWS_SECRET_ACCESS_KEY"]
    print(f"gpu deployment's container settings: image {job.image}, "
          f"container_create_kwargs {job.container_create_kwargs}")  # fmt: skip
    assert job.container_create_kwargs["device_requests"] == [
        {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}
    ]
    with stack.client() as client:
        stored = json.dumps([client.read_work_pool(p).base_job_template for p in
                             ("cpu-docker", "gpu-docker")] + [
            client.read_deployment_by_name(d).job_variables
            for d in ("deepfake-pipeline/pipeline", "inpaint-batch/gpu")], default=str)  # fmt: skip
    assert "prefect.blocks.secret.s3-worker-secret-key" in stored  # a reference, not a value
    assert not [v for v in stack.secrets.values() if v in stored], "a secret in a job template"
    sh("docker", "rm", containers["ID"])


def test_schedule_fires_by_itself_and_retrains_with_guarded_promotion(stack, reference_run):
    # The weekly cron of retrain-stack, plus a 20-second interval so that it fires during the test.
    parameters = {"settings": settings("a", **SD2_ON_GPU_WORKER), "promote": "if_better"}
    since = dt.datetime.now(dt.UTC)
    stack.prefect("deploy", "--name", "retrain-stack", "--interval", "20",
                  "--params", json.dumps(parameters))  # fmt: skip
    with stack.client() as client:
        deadline = time.monotonic() + 300
        while not (started := runs_of(client, "deepfake-pipeline/retrain-stack", since)):
            assert time.monotonic() < deadline, "the schedule never fired"
            time.sleep(3)
        run = wait_for_run(client, started[0].id)
        dep = client.read_deployment_by_name("deepfake-pipeline/retrain-stack")
        for schedule in dep.schedules:  # keep the cron, stop the test's interval
            if schedule.schedule.model_dump().get("interval"):
                client.update_deployment_schedule(dep.id, schedule.id, active=False)
    assert run.state.is_completed(), run.state
    assert run.auto_scheduled, "this run was started by the schedule"
    s3 = stack.s3_client()
    # Run ids begin with their UTC time: the newest report is the scheduled run's.
    newest = max(
        key
        for key in stack.objects("pipeline/a/reports/")
        if key.endswith("/promotion.json") and not key.startswith("latest/")
    )
    decision = json.loads(
        s3.get_object(Bucket="deepfake", Key=f"pipeline/a/reports/{newest}")["Body"].read()
    )
    # An earlier run on this prefix is live: the scheduled one was compared with it, or found
    # to be the same detector (nothing changed).
    assert decision["policy"] == "if_better", decision
    assert "current_roc_auc" in decision or "the same detector" in decision["reason"], decision
    print(f"\nscheduled run {run.id} ({run.name}): promotion {decision}")


def test_server_restart_keeps_deployments_schedules_and_cached_results(stack, reference_run):
    def snapshot():
        with stack.client() as client:
            return sorted(
                (d.name, sorted((str(s.id), s.active) for s in d.schedules))
                for d in client.read_deployments()
            )

    before = snapshot()
    stack.compose("restart", "prefect-server")
    stack.wait_healthy(("prefect-server",))
    assert snapshot() == before
    run = _run_pipeline(stack, "deepfake-pipeline/pipeline-stack",
                        {"settings": settings("a", **SD2_ON_GPU_WORKER)})  # fmt: skip
    assert run.state.is_completed(), run.state
    with stack.client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}
    assert {name for name, state in states.items() if state == "Cached"} == STAGE_TASKS, states


def test_a_worker_started_before_the_server_waits_and_connects(stack) -> None:
    stack.compose("stop", "prefect-server")
    name = f"{stack.project}_late-worker"
    # Debug logging: its attempts to reach the server, and their failures, are in its log.
    worker_env = {**stack.worker_env(), "PREFECT_LOGGING_LEVEL": "DEBUG"}
    env = [f"-e{k}={v}" for k, v in worker_env.items()]
    # The command of the image and of compose's workers, named.
    sh("docker", "run", "-d", "--name", name, "--network", stack.network, *env,
       "deepfake-worker:cpu", "prefect", "worker", "start", "--pool", "cpu", "--type",
       "process", "--name", "late-worker")  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # Its first request is under way while the server is down: only then is it started.
        while "Connecting to API at" not in (log := sh("docker", "logs", name)):
            assert time.monotonic() < deadline, f"it never tried to reach the server:\n{log}"
            time.sleep(0.5)
        stack.compose("start", "prefect-server")
        stack.wait_healthy(("prefect-server",))
        deadline = time.monotonic() + 120
        with stack.client() as client:
            while "late-worker" not in {w.name for w in client.read_workers_for_work_pool("cpu")}:
                assert time.monotonic() < deadline, sh("docker", "logs", name)
                time.sleep(2)
        # It was trying before the server was started (seen above), and it is still up.
        assert json.loads(sh("docker", "inspect", name))[0]["State"]["Running"], log
    finally:
        sh("docker", "rm", "-f", name, check=False)


def test_secrets_stay_out_of_images_and_logs(stack) -> None:
    values = list(stack.secrets.values())
    for image in IMAGES:
        described = sh("docker", "image", "inspect", image) + sh(
            "docker", "history", "--no-trunc", image
        )
        assert not [v for v in values if v in described], image
        files = sh("docker", "run", "--rm", image, "ls", "-a", "/opt/deepfake/docker")
        assert ".env\n" not in files + "\n"
    logs = stack.compose("logs", "--no-color")
    assert logs.count("Worker 'gpu-worker' submitting flow run") >= 3  # the logs are real
    leaked = [v for v in values if v in logs]
    assert not leaked, f"{len(leaked)} secret values in the stack's logs"
