"""Storage on a real S3 endpoint: moto's server on loopback, started and stopped by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from deepfake.config import load_settings
from deepfake.storage import Storage, StorageError
from flows.main import main, pipeline
from tasks._common import result_storage_for
from tests.s3_server import FaultyProxy, moto_process, moto_server

BUCKET = "deepfake-test"
# Every stage, on S3, in the smallest configuration: two mask types, no slow protocols.
TINY = [
    "data.limit=16",
    "data.image_size=48",
    "features.input_size=64",
    "masks.types=[random,ellipse]",
    "svm.alpha=[0.1]",
    "svm.top_k=[1,4]",
    "svm.cv_folds=2",
    "evaluate.repeats=1",
    "evaluate.leave_one_family_out=false",
    "evaluate.robustness=false",
]
# Fake credentials: moto accepts any; the tests also check they never leak.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY000TEST",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-7f3a9",
}


def fake_credentials(env: pytest.MonkeyPatch) -> None:
    for key, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        env.setenv(key, value)
    env.delenv("AWS_ENDPOINT_URL", raising=False)
    env.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto on loopback with one bucket, for the module; its endpoint URL."""
    with moto_server() as endpoint:
        credentials = {name.lower(): value for name, value in CREDENTIALS.items()}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The endpoint, with the fake credentials in the environment for this test only."""
    fake_credentials(monkeypatch)
    return moto_endpoint


def sources_written(endpoint: str, prefix: str) -> dict[str, tuple]:
    """The sources stage's objects under ``prefix``: key -> (ETag, when it was written)."""
    client = boto3.client("s3", endpoint_url=endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{prefix}/sources/"
    )
    return {
        item["Key"]: (item["ETag"], item["LastModified"])
        for page in pages
        for item in page.get("Contents", [])
    }


def keys(endpoint: str, prefix: str) -> set[str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    found = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found |= {item["Key"][len(prefix) + 1 :] for item in page.get("Contents", [])}
    return found


def test_storage_round_trip_on_s3(s3: str, tmp_path: Path) -> None:
    store = Storage(f"s3://{BUCKET}/unit", endpoint_url=s3)
    store.check()
    store.write_bytes("a/one.bin", b"1")
    store.write_many({f"many/{i}.bin": bytes([i]) * 10 for i in range(20)})
    assert store.read_many(["many/3.bin", "nope.bin", "a/one.bin"])[0] == bytes([3]) * 10
    assert isinstance(store.read_many(["nope.bin"])[0], StorageError)
    store.write_json("j/m.json", {"x": 1})
    assert store.read_json("j/m.json") == {"x": 1}
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 2**20))
    store.put_file(big, "files/big.bin")
    store.get_file("files/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert "many/19.bin" in store.list_files("")
    assert keys(s3, "unit") == store.list_files("")


def test_endpoint_comes_from_the_environment_too(s3: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    store = Storage(f"s3://{BUCKET}/env")
    store.write_bytes("x.bin", b"x")
    assert keys(s3, "env") == {"x.bin"}


def test_missing_bucket_fails_fast_with_one_message(s3: str, capsys, tmp_path, monkeypatch):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Storage("s3://no-such-bucket/x", endpoint_url=s3).check()
    monkeypatch.chdir(tmp_path)
    code = main(["--storage", "s3://no-such-bucket/x", "--set", f"storage.endpoint_url={s3}"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_refused_or_missing_credentials_fail_fast_with_one_message(monkeypatch) -> None:
    # This moto server checks access keys against its (empty) IAM: ours are unknown to it.
    fake_credentials(monkeypatch)
    with moto_process({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        with pytest.raises(StorageError, match="access to bucket 'any' was refused") as err:
            Storage("s3://any/prefix", endpoint_url=endpoint).check()
        assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in str(err.value)
        # No credentials anywhere (a fresh process: fsspec keeps file systems per options): said
        # so, not botocore's traceback.
        type(Storage("s3://any/prefix", endpoint_url=endpoint).fs).clear_instance_cache()
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with pytest.raises(StorageError, match="no AWS credentials were found"):
            Storage("s3://any/prefix", endpoint_url=endpoint).check()


def run_flow(root: str, endpoint: str, *extra: str) -> tuple[dict, set[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    cfg = load_settings(overrides=[*TINY, f"storage.endpoint_url={endpoint}", *extra], storage=root)
    flow = pipeline.with_options(result_storage=result_storage_for(cfg.storage))
    state = flow(settings=cfg.model_dump(mode="json"), return_state=True)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    cached = {r.name.rsplit("-", 1)[0] for r in runs if r.state.name == "Cached"}
    return state.result(), cached


@pytest.fixture(scope="module")
def clean_run(moto_endpoint, prefect_server, tmp_path_factory):
    """One whole run on S3, shared by the module; its credentials are set only while it runs."""
    workdir = tmp_path_factory.mktemp("cwd")
    before = os.getcwd()
    with pytest.MonkeyPatch.context() as env:
        fake_credentials(env)
        env.chdir(workdir)
        summary, _ = run_flow(f"s3://{BUCKET}/clean", moto_endpoint)
    assert os.getcwd() == before
    return summary, workdir


def test_whole_flow_runs_on_s3_and_writes_nothing_locally(s3, clean_run) -> None:
    summary, workdir = clean_run
    assert summary["report"] == f"s3://{BUCKET}/clean/reports/{summary['run_id']}"
    stored = keys(s3, "clean")
    for stage in ("sources/", "masks/", "inpainted/", "split/", "features/", "detector/",
                  "evaluation/", "prefect-results/"):  # fmt: skip
        assert any(k.startswith(stage) for k in stored), stage
    for name in ("metrics.json", "report.md", "roc.png", "pr.png", "confusion_matrix.png"):
        assert f"reports/latest/{name}" in stored
        assert f"reports/{summary['run_id']}/{name}" in stored
    bundle = {"detector.json", "svm.skops"}  # a frozen backbone: no weights file
    assert {f"models/{summary['run_id']}/{name}" for name in bundle} <= stored
    assert "models/latest.json" in stored  # the pointer to the live one
    assert list(workdir.iterdir()) == []  # nothing written to the working directory


def test_cached_results_live_in_s3(s3, clean_run, tmp_path, monkeypatch) -> None:
    summary, _ = clean_run
    monkeypatch.chdir(tmp_path)
    again, cached = run_flow(f"s3://{BUCKET}/clean", s3)
    assert cached == {"prepare-sources", "make-masks", "collect-inpainting", "split-dataset",
                      "extract-features", "train-detector", "evaluate-detector"}  # fmt: skip
    assert again["roc_auc"] == summary["roc_auc"]


def test_an_outage_fails_the_run_by_name_and_a_run_through_faults_resumes_identically(
    s3, clean_run, tmp_path, monkeypatch
):
    """S3 stops answering (503 to every request) once the masks stage begins: the run fails,
    its message naming the object and S3's answer. The next run, through a proxy that answers
    503 SlowDown to its first 3 and then every 9th request, reuses the sources made before the
    outage (the task's cache key names the endpoint, the stage finds its finished folder), makes
    every other stage through the faults, and ends with the clean run's outputs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    summary, _ = clean_run
    monkeypatch.chdir(tmp_path)
    root = f"s3://{BUCKET}/faulty"
    with monkeypatch.context() as env:
        env.setenv("AWS_MAX_ATTEMPTS", "1")  # the outage fails a request in seconds, not minutes
        with FaultyProxy(s3, outage_after=f"/{BUCKET}/faulty/masks/") as proxy:
            cfg = load_settings(overrides=[*TINY, f"storage.endpoint_url={proxy.url}"],
                                storage=root)  # fmt: skip
            flow = pipeline.with_options(result_storage=result_storage_for(cfg.storage))
            state = flow(settings=cfg.model_dump(mode="json"), return_state=True)
    assert proxy.outage_at is not None and proxy.faults > 0
    assert state.is_failed(), state
    print(f"\nthe run during the outage: {state.message}")
    assert "Service Unavailable" in state.message or "reduce your request rate" in state.message
    assert f"s3://{BUCKET}/faulty/masks/" in state.message, state.message  # which object
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))  # fmt: skip
    assert {t.name.rsplit("-", 1)[0] for t in tasks if t.state.is_failed()} == {"make-masks"}
    made = sources_written(s3, "faulty")
    assert made  # the sources were made before the outage
    with FaultyProxy(s3, fail_first=3, every=9) as proxy:
        faulty, _ = run_flow(root, proxy.url)
    assert proxy.faults > 10
    assert sources_written(s3, "faulty") == made  # reused, not made again; the rest made now
    clean = Storage(f"s3://{BUCKET}/clean", endpoint_url=s3)
    other = Storage(root, endpoint_url=s3)
    stage_files = {k for k in clean.list_files("") if k.split("/")[0] in
                   ("sources", "masks", "inpainted", "features", "detector")}  # fmt: skip
    assert stage_files and stage_files <= other.list_files("")
    for key in sorted(stage_files):
        if key.endswith((".png", ".parquet", ".json")) and "/plans/" not in key:
            assert clean.read_bytes(key) == other.read_bytes(key), key
    assert faulty["roc_auc"] == summary["roc_auc"]


def test_s3_errors_name_the_object_and_retries_follow_the_aws_settings(s3, monkeypatch) -> None:
    from deepfake.storage import retry_policy

    assert retry_policy() == {"max_attempts": 8, "mode": "standard"}
    monkeypatch.setenv("AWS_RETRY_MODE", "sometimes")
    with pytest.raises(ValueError, match="AWS_RETRY_MODE='sometimes'"):
        retry_policy()
    monkeypatch.delenv("AWS_RETRY_MODE")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS='0'"):
        retry_policy()
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with FaultyProxy(s3, fail_first=10**9) as proxy:  # S3 down
        store = Storage(f"s3://{BUCKET}/named", endpoint_url=proxy.url)
        calls = {"exists": lambda: store.exists("a/b.json"),
                 "read": lambda: store.read_bytes("a/b.json"),
                 "write": lambda: store.write_bytes("a/b.json", b"{}"),
                 "list": lambda: store.list_files("a")}  # fmt: skip
        for name, call in calls.items():
            with pytest.raises(OSError, match=f"s3://{BUCKET}/named/a") as raised:
                call()
            assert "Service Unavailable" in str(raised.value) or "rate" in str(raised.value), name


def test_no_secret_reaches_any_stored_object(s3, clean_run) -> None:
    """Every object the run stored (Prefect's logs and artifacts: the next test)."""
    store = Storage(f"s3://{BUCKET}/clean", endpoint_url=s3)
    for key in store.list_files(""):
        data = store.read_bytes(key)
        for secret in CREDENTIALS.values():
            assert secret.encode() not in data, key


def test_predict_reads_images_and_detector_from_s3(s3, clean_run, capsys, monkeypatch) -> None:
    import json

    from flows.predict import main as predict

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    model = f"s3://{BUCKET}/clean/models/latest"
    code = predict(["--json", "--model", model, f"s3://{BUCKET}/clean/sources"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(lines) == 16
    assert all(line["path"].startswith("s3://") and line["label"] in {"real", "inpainted"}
               for line in lines)  # fmt: skip


def test_predict_on_a_denied_prefix_is_one_line_and_exit_2(s3, clean_run, capsys, monkeypatch):
    from flows.predict import main as predict

    with FaultyProxy(s3, deny=f"{BUCKET}/clean/sources") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        model = f"s3://{BUCKET}/clean/models/latest"
        code = predict(["--model", model, f"s3://{BUCKET}/clean/sources"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [f"error: s3://{BUCKET}/clean/sources: access denied"]
    assert "Traceback" not in err


def test_secrets_stay_out_of_logs_artifacts_and_files(
    s3, prefect_server, tmp_path, monkeypatch, capsys, caplog
) -> None:
    """A whole run, S3 storage and a Kaggle archive in S3, with fake AWS and Kaggle credentials
    in the environment: no log line, Prefect artifact or stored byte may contain them."""
    import json
    import logging

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.types import DateTime

    from tests.kaggle_archive import build_archive

    kaggle = {"KAGGLE_USERNAME": "fake-kaggle-user-93", "KAGGLE_KEY": "fake-kaggle-key-5d2e",
              "KAGGLE_API_TOKEN": "KGAT_fake_token_77a1"}  # fmt: skip
    for name, value in kaggle.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    build_archive(tmp_path / "deepfakeart.zip", folders=20, size=48)
    raw = Storage(f"s3://{BUCKET}/raw", endpoint_url=s3)
    raw.put_file(tmp_path / "deepfakeart.zip", "deepfakeart.zip")
    caplog.set_level(logging.DEBUG)
    settings = [*TINY, f"storage.endpoint_url={s3}", "data.source=kaggle",
                f"data.kaggle.archive=s3://{BUCKET}/raw/deepfakeart.zip"]  # fmt: skip
    started = DateTime.now("UTC")
    code = main(["--storage", f"s3://{BUCKET}/secrets", *sum((["--set", s] for s in settings), [])])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    texts = {"stdout": printed.out, "stderr": printed.err, "log records": caplog.text}
    with get_client(sync_client=True) as client:
        # This run's flow runs only (the test server is shared), and every page of their logs
        # (the server answers at most 200 records at a time; pages of 10 here).
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started))
        )
        ids = [r.id for r in runs]
        logs, page = [], 10
        while True:
            batch = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=page, offset=len(logs)
            )
            logs += batch
            if len(batch) < page:
                break
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
    assert len(logs) > page  # more than one page: the paging was needed
    assert any(log.name == "deepfake" for log in logs)  # the library's own lines among them
    assert {a.key for a in artifacts} >= {"detector-metrics", "detector-report"}
    texts["prefect logs"] = "\n".join(log.message for log in logs)
    texts["prefect artifacts"] = "\n".join(
        json.dumps(a.data, default=str) + (a.description or "") for a in artifacts
    )
    store = Storage(f"s3://{BUCKET}/secrets", endpoint_url=s3)
    keys = sorted(store.list_files(""))
    assert any(k.startswith("reports/latest/") for k in keys)
    assert any(k.endswith("manifest.parquet") for k in keys)
    for key in keys:
        texts[key] = store.read_bytes(key).decode("latin-1")
    assert "external" in texts["reports/latest/metrics.json"]  # the Kaggle path really ran
    for secret in [*CREDENTIALS.values(), *kaggle.values()]:
        leaks = [where for where, text in texts.items() if secret in text]
        assert not leaks, (secret, leaks)


def test_reads_that_fail_twice_then_succeed_keep_every_record(s3, monkeypatch) -> None:
    """A read error that is not a decode failure is tried again, never recorded as a skipped
    image: the sources and features stages keep every record."""
    import errno

    from s3fs import S3FileSystem

    from deepfake.features.stage import extract_features
    from deepfake.inpaint import run_inpaint
    from deepfake.masks.stage import make_masks
    from deepfake.sources.stage import prepare_sources
    from deepfake.split import split_dataset

    cfg = load_settings(overrides=[*TINY, f"storage.endpoint_url={s3}"],
                        storage=f"s3://{BUCKET}/flaky")  # fmt: skip
    store = Storage.open(cfg.storage)
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    split = split_dataset(store, cfg.split, dataset)
    frame = store.read_parquet(split.manifest)
    flaky = {store._path(uri) for uri in frame["uri"].iloc[::7]}  # some real, some inpainted
    failures: dict[str, int] = {}
    real_cat_file = S3FileSystem._cat_file

    async def cat_file(self, path, *args, **kwargs):
        key = self._strip_protocol(path)
        if key in flaky and failures.get(key, 0) < 2:  # fails twice (EIO), then reads
            failures[key] = failures.get(key, 0) + 1
            raise OSError(errno.EIO, "connection reset while reading", key)
        return await real_cat_file(self, path, *args, **kwargs)

    monkeypatch.setattr(S3FileSystem, "_cat_file", cat_file)
    features = extract_features(store, cfg.features, split)
    assert failures == dict.fromkeys(flaky, 2)
    kept = store.read_parquet(features.manifest)
    assert len(kept) == len(frame)
    assert store.read_json(f"{features.folder}/skipped.json") == []
