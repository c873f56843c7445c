from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from deepfake.storage import Refused, Storage, StorageError


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path, monkeypatch) -> None:
    import os

    store = Storage(tmp_path / "root")
    store.write_bytes("a/b/file.bin", b"one")

    def crash(fd: int) -> None:  # the new bytes are written, not yet in place: the disk dies
        raise OSError("disk gone")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", crash)
        with pytest.raises(OSError, match="disk gone"):
            store.write_bytes("a/b/file.bin", b"two, half written when it died")
    assert store.read_bytes("a/b/file.bin") == b"one"  # a reader sees the old file, whole
    assert store.list_files("") == {"a/b/file.bin"}  # no temporary left behind
    store.write_bytes("a/b/file.bin", b"two")
    assert store.read_bytes("a/b/file.bin") == b"two"


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    store.write_bytes("x.bin", b"old")

    with pytest.raises(TypeError):
        store.write_bytes("x.bin", object())  # type: ignore[arg-type]
    assert store.read_bytes("x.bin") == b"old"
    assert store.list_files("") == {"x.bin"}


def test_json_and_parquet_round_trip(tmp_path: Path) -> None:
    store = Storage(str(tmp_path))
    store.write_json("r/m.json", {"b": 1, "a": [1, 2]})
    frame = pd.DataFrame({"record_id": ["x", "y"], "label": [0, 1]})
    data = store.write_parquet("r/t.parquet", frame, {"deepfake.files": "[]"})
    assert store.read_json("r/m.json") == {"a": [1, 2], "b": 1}
    pd.testing.assert_frame_equal(store.read_parquet("r/t.parquet"), frame)
    assert Storage.parquet_metadata(data) == {"deepfake.files": "[]"}


def test_parquet_compresses_text_and_stores_arrays_of_numbers_plain(tmp_path: Path) -> None:
    import io

    import numpy as np
    import pyarrow.parquet as pq

    store = Storage(tmp_path)
    uris = [f"inpainted/{i:05d}.png" for i in range(400)]
    text = pd.DataFrame({"uri": uris, "grid": [[16, 16]] * 400})
    cells = text.assign(cells=[np.full(8, i, np.float16).tobytes() for i in range(400)])
    for name, frame, codec in (("text", text, "SNAPPY"), ("cells", cells, "UNCOMPRESSED")):
        data = store.write_parquet(f"{name}.parquet", frame)
        chunks = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
        assert {chunks.column(i).compression for i in range(chunks.num_columns)} == {codec}
        pd.testing.assert_frame_equal(store.read_parquet(f"{name}.parquet"), frame)


def test_missing_file_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nothing/here.png"):
        Storage(tmp_path).read_bytes("nothing/here.png")
    assert Storage(tmp_path).list_files("nothing") == set()


def test_relative_root_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Storage("storage").root == str(tmp_path / "storage")
    assert Storage("s3://bucket/prefix/").root == "s3://bucket/prefix"


def test_only_regular_files_are_read_and_a_limit_bounds_the_read(tmp_path: Path) -> None:
    import os

    store = Storage(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "zero").symlink_to("/dev/zero")
    store.write_bytes("ok", b"x" * 100)
    for name in ("pipe", "zero"):  # returns at once instead of blocking or reading for ever
        with pytest.raises(Refused, match="not a regular file"):
            store.read_bytes(name)
    assert store.read_bytes("ok", limit=100) == b"x" * 100
    with pytest.raises(Refused, match="over the limit of 99 bytes") as refused:
        store.read_bytes("ok", limit=99)
    assert refused.value.reason.startswith("100 bytes")
    found = store.read_many(["ok", "pipe"])  # a refused file is its own error, not the batch's
    assert found[0] == b"x" * 100 and isinstance(found[1], Refused)
