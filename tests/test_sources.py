from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake.config import DataConfig
from deepfake.section import Unavailable
from deepfake.sources.common import choose_subset
from deepfake.sources.sample import SAMPLE_PHOTOS, tile_positions
from deepfake.sources.stage import preflight_source, prepare_sources, skipped_sources
from deepfake.stages import MANIFEST_COLUMNS
from deepfake.storage import Storage


def test_sample_data_is_offline_real_photos_cut_into_tiles(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    out = prepare_sources(store, DataConfig())
    frame = store.read_parquet(out.manifest)
    assert len(frame) >= 120
    assert list(frame.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert set(frame["group"]) == {name for name, _, _ in SAMPLE_PHOTOS}
    assert (frame["label"] == 0).all() and (frame["variant"] == "real").all()
    assert frame["source_id"].is_unique
    for uri in frame["uri"].iloc[:5]:
        image = Image.open(tmp_path / uri)
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 128))


def test_flat_tiles_are_left_out() -> None:
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[:, 64:] = np.random.default_rng(0).integers(0, 255, (64, 64, 3))
    assert tile_positions(pixels, 64, 10) == [(0, 1)]


def test_limit_takes_the_same_subset_every_time(tmp_path: Path) -> None:
    ids = [f"id{i}" for i in range(50)]
    assert choose_subset(ids, 10, 0) == choose_subset(ids, 10, 0)
    assert choose_subset(ids, 10, 0) != choose_subset(ids, 10, 1)
    assert len(set(choose_subset(ids, 10, 0))) == 10
    store = Storage(tmp_path)
    first = store.read_parquet(prepare_sources(store, DataConfig(limit=12)).manifest)
    again = store.read_parquet(
        prepare_sources(Storage(tmp_path / "b"), DataConfig(limit=12)).manifest
    )
    assert list(first["sha256"]) == list(again["sha256"])
    assert len(first) == 12


def test_folder_source_recurses_and_skips_bad_files(tmp_path: Path, image_folder: Path) -> None:
    store = Storage(tmp_path / "store")
    out = prepare_sources(
        store, DataConfig(source="folder", folder={"path": str(image_folder)}, image_size=48)
    )
    frame = store.read_parquet(out.manifest)
    assert len(frame) == 6
    assert frame["group"].is_unique  # each file is its own source photo
    skipped = skipped_sources(store, out)
    reasons = {s["reason"].split(":")[0].rsplit("/", 1)[-1]: s["reason"] for s in skipped}
    assert set(reasons) == {"empty.png", "not_an_image.jpg"}
    assert "empty file" in reasons["empty.png"]
    assert Image.open(tmp_path / "store" / frame["uri"][0]).size == (48, 48)


def test_folder_source_needs_a_real_folder(tmp_path: Path) -> None:
    store = Storage(tmp_path / "store")
    nowhere = DataConfig(source="folder", folder={"path": str(tmp_path / "nowhere")})
    unset = DataConfig(source="folder")
    for check in (preflight_source, prepare_sources):  # refused before any work, and in it
        with pytest.raises(Unavailable, match=r"data.folder.path .*nowhere: no such folder"):
            check(store, nowhere)
        with pytest.raises(Unavailable, match=r"needs data.folder.path=DIR"):
            check(store, unset)
    assert store.list_files("") == set()


def test_finished_sources_are_reused_and_deleted_files_redone(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    first = prepare_sources(store, DataConfig(limit=5))
    victim = tmp_path / store.read_parquet(first.manifest)["uri"][0]
    stamp = victim.stat().st_mtime_ns
    assert prepare_sources(store, DataConfig(limit=5)) == first
    assert victim.stat().st_mtime_ns == stamp
    victim.unlink()
    assert prepare_sources(store, DataConfig(limit=5)) == first
    assert victim.exists()


def test_fifos_devices_and_oversized_files_are_skipped_unread(
    tmp_path: Path, image_folder: Path
) -> None:
    import os

    os.mkfifo(image_folder / "pipe.png")  # reading it would wait for a writer for ever
    (image_folder / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    big = np.random.default_rng(1).integers(0, 255, (256, 256, 3), np.uint8)
    Image.fromarray(big).save(image_folder / "big.png")  # about 197 kB of noise
    store = Storage(tmp_path / "store")
    cfg = DataConfig(source="folder", folder={"path": str(image_folder)}, image_size=48,
                     max_file_bytes=100_000)  # fmt: skip
    out = prepare_sources(store, cfg)
    assert len(store.read_parquet(out.manifest)) == 6  # the good images, all of them
    reasons = {s["reason"].split(":")[0].rsplit("/", 1)[-1]: s["reason"]
               for s in skipped_sources(store, out)}  # fmt: skip
    assert "not a regular file" in reasons["pipe.png"]
    assert "not a regular file" in reasons["zero.png"]
    assert "over the limit of 100000 bytes" in reasons["big.png"]
