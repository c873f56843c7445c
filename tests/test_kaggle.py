"""Kaggle DeepfakeArt: real extraction and pruning on an archive with the real layout; the
download boundary faked only for the download call itself."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from deepfake.config import DataConfig
from deepfake.sources.archive import UnsafeArchive, read_members, safe_name
from deepfake.sources.kaggle import (
    KaggleAuthError,
    KaggleDownloadError,
    OfficialKaggleClient,
    archive_uri,
    download_with_retries,
)
from deepfake.sources.stage import external_records, prepare_sources, skipped_sources
from deepfake.storage import Storage
from tests.kaggle_archive import build_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    path = tmp_path_factory.mktemp("kaggle") / "deepfakeart.zip"
    return path, build_archive(path, folders=12, size=64)


def test_safe_name_refuses_escapes() -> None:
    assert safe_name("a/./b/c.png") == "a/b/c.png"
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", "C:/x.png", "\\\\server\\x"):
        assert safe_name(bad) is None, bad


def test_unsafe_members_are_refused_by_name(archive) -> None:
    path, _ = archive
    refused = [p for _, data, p in read_members(path, lambda n: True, 10**9) if data is None]
    text = "\n".join(refused)
    assert "'../escape.png'" in text and "'/etc/absolute.png'" in text
    assert "'similar/inpainting/999/original.png'" in text and "symbolic link" in text
    assert len(refused) == 3


def test_total_size_limit_refuses_the_archive(archive) -> None:
    path, _ = archive
    with pytest.raises(UnsafeArchive, match=r"similar/inpainting/.+ takes the uncompressed total"):
        list(read_members(path, lambda n: True, max_bytes=20_000))


def test_a_member_over_the_file_limit_is_skipped_and_the_rest_read(archive) -> None:
    path, info = archive
    read = list(read_members(path, lambda n: n.endswith("group.png"), 10**9, 5_000))
    big = [p for _, data, p in read if data is None and "over the limit of 5000 " in (p or "")]
    small = [name for name, data, _ in read if data is not None]
    assert big and small  # the larger group images are refused, smaller ones still read
    assert all(len(data) <= 5_000 for _, data, _ in read if data is not None)


def test_tar_links_and_escapes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        members = [
            ("ok/a.png", tarfile.REGTYPE),
            ("../up.png", tarfile.REGTYPE),
            ("ok/link.png", tarfile.SYMTYPE),
            ("ok/hard.png", tarfile.LNKTYPE),
            ("ok/tty.png", tarfile.CHRTYPE),  # a character device
            ("ok/disk.png", tarfile.BLKTYPE),  # a block device
            ("ok/pipe.png", tarfile.FIFOTYPE),
        ]
        for name, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = 3 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"abc") if kind == tarfile.REGTYPE else None)
    result = {name: (data, problem) for name, data, problem in read_members(path, bool, 100)}
    assert result["ok/a.png"] == (b"abc", None)
    assert "leaves the extraction folder" in result["../up.png"][1]
    assert "link" in result["ok/link.png"][1] and "link" in result["ok/hard.png"][1]
    for device in ("ok/tty.png", "ok/disk.png", "ok/pipe.png"):
        data, problem = result[device]
        assert data is None and problem.endswith(f"'{device}' refused: it is not a regular file")


def test_prune_keeps_originals_and_the_external_set(archive, tmp_path: Path) -> None:
    path, info = archive
    store = Storage(tmp_path)
    out = prepare_sources(
        store, DataConfig(source="kaggle", kaggle={"archive": str(path)}, image_size=64)
    )
    frame = store.read_parquet(out.manifest)
    assert sorted(frame["record_id"]) == sorted(info["good"])  # record id = folder id
    assert (frame["group"] == frame["source_id"]).all()
    external = external_records(store, out)
    assert sorted(external["source_id"]) == sorted(info["good"])
    assert (external["label"] == 1).all() and (external["variant"] == "external").all()
    assert external["mask_uri"].str.endswith("_mask.png").all()
    reasons = " | ".join(s["reason"] for s in skipped_sources(store, out))
    assert f"similar/inpainting/{info['missing_original'][0]}: no original.png" in reasons
    assert f"similar/inpainting/{info['corrupt'][0]}/original.png" in reasons
    assert "symbolic link" in reasons and "escape.png" in reasons and "absolute.png" in reasons
    # group.png and the other files are not used for training
    assert not any("group" in uri for uri in frame["uri"])


def test_extracted_folder_gives_the_same_records(archive, tmp_path: Path) -> None:
    path, info = archive
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.startswith("similar/") and not name.startswith("similar/inpainting/999"):
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(zf.read(name))
    a = prepare_sources(
        Storage(tmp_path / "a"), DataConfig(source="kaggle", kaggle={"archive": str(path)})
    )
    b = prepare_sources(
        Storage(tmp_path / "b"), DataConfig(source="kaggle", kaggle={"archive": str(folder)})
    )
    frame_a = Storage(tmp_path / "a").read_parquet(a.manifest)
    frame_b = Storage(tmp_path / "b").read_parquet(b.manifest)
    assert list(frame_a["sha256"]) == list(frame_b["sha256"])


def test_limit_takes_the_same_folders_every_time(archive, tmp_path: Path) -> None:
    path, _ = archive
    cfg = DataConfig(source="kaggle", kaggle={"archive": str(path)}, limit=4, image_size=32)
    first = Storage(tmp_path / "a").read_parquet(
        prepare_sources(Storage(tmp_path / "a"), cfg).manifest
    )
    again = Storage(tmp_path / "b").read_parquet(
        prepare_sources(Storage(tmp_path / "b"), cfg).manifest
    )
    assert list(first["record_id"]) == list(again["record_id"])
    assert len(first) <= 4


class FakeClient:
    """Stands in for the network: the download call writes the test archive, after failures."""

    def __init__(self, archive: Path, failures: list[Exception]) -> None:
        self.archive, self.failures, self.calls = archive, list(failures), 0

    def download(self, dataset: str, dest: Path) -> Path:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        target = dest / "deepfakeart.zip"
        target.write_bytes(self.archive.read_bytes())
        return target


def test_download_is_kept_in_storage_and_not_repeated(archive, tmp_path, monkeypatch) -> None:
    path, info = archive
    client = FakeClient(path, [])
    monkeypatch.setattr("deepfake.sources.kaggle.OfficialKaggleClient", lambda: client)
    store = Storage(tmp_path)
    prepare_sources(store, DataConfig(source="kaggle", image_size=32))
    assert client.calls == 1
    assert store.exists(archive_uri("danielmao2019/deepfakeart"))
    out = prepare_sources(store, DataConfig(source="kaggle", image_size=48))  # another stage digest
    assert client.calls == 1
    assert out.records == len(info["good"])


def test_network_errors_are_retried_with_backoff(archive, tmp_path: Path) -> None:
    path, _ = archive
    client = FakeClient(path, [ConnectionError("reset"), TimeoutError("slow")])
    sleeps: list[float] = []
    got = download_with_retries(client, "o/d", tmp_path, attempts=4, sleep=sleeps.append)
    assert got.exists() and client.calls == 3 and sleeps == [2.0, 4.0]
    failing = FakeClient(path, [ConnectionError("down")] * 5)
    with pytest.raises(KaggleDownloadError, match="failed 3 times"):
        download_with_retries(failing, "o/d", tmp_path, attempts=3, sleep=lambda s: None)


def test_authentication_errors_are_not_retried(archive, tmp_path: Path) -> None:
    path, _ = archive
    client = FakeClient(path, [KaggleAuthError("no credentials")])
    with pytest.raises(KaggleAuthError):
        download_with_retries(client, "o/d", tmp_path, sleep=lambda s: None)
    assert client.calls == 1


@pytest.fixture
def no_kaggle_credentials(tmp_path: Path, monkeypatch) -> Path:
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    return tmp_path


def test_official_client_without_credentials_says_where_they_go(no_kaggle_credentials) -> None:
    with pytest.raises(KaggleAuthError) as err:
        OfficialKaggleClient().download("danielmao2019/deepfakeart", no_kaggle_credentials)
    message = str(err.value)
    assert "KAGGLE_API_TOKEN" in message and "kaggle.json" in message
    assert err.value.__cause__ is None


def http_error(status: int, text: str) -> Exception:
    """The error the kaggle client raises for an HTTP status (its http client calls requests'
    ``raise_for_status``): a real ``requests.HTTPError`` around a real response, whose text
    echoes a key."""
    import requests

    response = requests.Response()
    response.status_code, response._content = status, text.encode()
    response.url = "https://www.kaggle.com/api/v1/datasets/download/danielmao2019/deepfakeart"
    try:
        response.raise_for_status()
    except requests.HTTPError as exc:
        return requests.HTTPError(text, response=exc.response)
    raise AssertionError(f"HTTP {status} raised nothing")


@pytest.fixture
def kaggle_api(no_kaggle_credentials, monkeypatch):
    """The real ``KaggleApi`` (real authentication from the environment) whose one network call,
    the download, is replaced: the Kaggle API is outside this machine."""
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-kaggle-key-123")
    from kaggle.api.kaggle_api_extended import KaggleApi

    calls = []

    def answer(failure: Exception | None):
        def download(self, dataset, path, quiet, unzip):  # noqa: ANN001, ANN202
            calls.append(dataset)
            if failure is not None:
                raise failure
            (Path(path) / "deepfakeart.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)

        monkeypatch.setattr(KaggleApi, "dataset_download_files", download)

    return answer, calls


def test_official_client_network_failure_keeps_secrets_out(kaggle_api, tmp_path) -> None:
    answer, calls = kaggle_api
    answer(ConnectionError("connection reset while sending key=s3cr3t-kaggle-key-123"))
    with pytest.raises(KaggleDownloadError) as err:
        download_with_retries(OfficialKaggleClient(), "danielmao2019/deepfakeart", tmp_path,
                              attempts=2, sleep=lambda s: None)  # fmt: skip
    assert calls == ["danielmao2019/deepfakeart"] * 2  # retried, then given up
    assert "s3cr3t" not in repr(err.value) and err.value.__cause__ is None
    assert "ConnectionError" in str(err.value)


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [(401, KaggleAuthError, "KAGGLE_API_TOKEN"), (403, KaggleAuthError, "kaggle.json"),
     (404, FileNotFoundError, "was not found")],
)  # fmt: skip
def test_official_client_maps_http_errors(kaggle_api, tmp_path, status, error, words) -> None:
    answer, calls = kaggle_api
    answer(http_error(status, "denied for key s3cr3t-kaggle-key-123"))
    with pytest.raises(error) as err:
        download_with_retries(OfficialKaggleClient(), "o/d", tmp_path, sleep=lambda s: None)
    assert calls == ["o/d"]  # never retried
    assert words in str(err.value) and "s3cr3t" not in str(err.value)


def test_official_client_returns_the_archive_it_wrote(kaggle_api, tmp_path) -> None:
    answer, calls = kaggle_api
    answer(None)
    assert OfficialKaggleClient().download("o/d", tmp_path) == tmp_path / "deepfakeart.zip"
