"""Scheduled retraining sees new data: stage keys cover what a stage reads (a folder's files, an
archive's bytes, the packages that shape outputs), and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from deepfake.config import DataConfig
from deepfake.sources.sample import sample_tiles
from deepfake.sources.stage import prepare_sources, source_inputs
from deepfake.stages import package_versions, stage_folder
from deepfake.storage import Storage
from tests.test_flow_main import QUICK, run

FOLDER = ["data.source=folder", "data.image_size=48", "masks.types=[random]", "svm.cv_folds=2"]


def write_photos(folder: Path, start: int, count: int) -> None:
    """``count`` real photo tiles as PNG files, each its own source."""
    folder.mkdir(parents=True, exist_ok=True)
    tiles = list(sample_tiles(96, 4))
    for i in range(start, start + count):
        tiles[i * 3][2].save(folder / f"photo{i:02d}.png")  # (id, group, image)


def test_a_grown_folder_is_read_again_and_an_unchanged_one_is_not(
    prefect_server, tmp_path: Path
) -> None:
    incoming, storage = tmp_path / "incoming", tmp_path / "storage"
    write_photos(incoming, 0, 10)
    settings = [*QUICK, *FOLDER, f"data.folder.path={incoming}"]
    first, states = run(storage, *settings)
    assert states["prepare-sources"] == "Completed"
    store = Storage(storage)
    records = store.read_json(f"reports/{first['run_id']}/metrics.json")
    write_photos(incoming, 10, 4)  # the folder grew
    second, states = run(storage, *settings)
    assert states["prepare-sources"] == "Completed" and states["train-detector"] == "Completed"
    grown = store.read_json(f"reports/{second['run_id']}/metrics.json")
    assert grown["n_train"] + grown["n_test_real"] + grown["n_test_inpainted"] > (
        records["n_train"] + records["n_test_real"] + records["n_test_inpainted"]
    )
    manifests = sorted(storage.glob("sources/*/manifest.parquet"))
    assert sorted(len(store.read_parquet(str(m.relative_to(storage)))) for m in manifests) == [
        10, 14,
    ]  # fmt: skip
    counts = [f"{m['n_train']} training and {m['n_test_real'] + m['n_test_inpainted']} test "
              "records" for m in (records, grown)]  # fmt: skip
    print(f"\nfolder of 10 photos: {counts[0]}; grown to 14: {counts[1]}")
    _, states = run(storage, *settings)  # nothing new: every stage from the cache
    assert states["prepare-sources"] == "Cached" and states["train-detector"] == "Cached"


def test_a_rewritten_file_changes_the_key_and_its_content_decides(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    write_photos(incoming, 0, 4)
    store = Storage(tmp_path / "storage")
    cfg = DataConfig(source="folder", folder={"path": str(incoming)}, image_size=48)
    before = source_inputs(store, cfg)
    (incoming / "photo00.png").touch()  # a new time, the same bytes: the same data
    assert source_inputs(store, cfg) == before
    write_photos(incoming, 1, 1)  # ...
    Image.open(incoming / "photo01.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        incoming / "photo00.png"
    )  # the same size, other pixels
    changed = source_inputs(store, cfg)
    assert changed != before
    first = prepare_sources(store, cfg)
    assert prepare_sources(store, cfg) == first  # unchanged inputs: the finished folder


def test_a_replaced_archive_is_read_again(tmp_path: Path) -> None:
    from tests.kaggle_archive import build_archive

    archive = tmp_path / "deepfakeart.zip"
    build_archive(archive, folders=6, size=48)
    store = Storage(tmp_path / "storage")
    cfg = DataConfig(source="kaggle", kaggle={"archive": str(archive)}, image_size=48)
    first = prepare_sources(store, cfg)
    assert prepare_sources(store, cfg) == first
    build_archive(archive, folders=9, size=48)  # a new release in the same place
    second = prepare_sources(store, cfg)
    assert second.folder != first.folder and second.records > first.records


def test_the_packages_that_shape_a_stage_name_its_folder(monkeypatch) -> None:
    before = stage_folder("features", "settings", packages=("torch",))
    assert stage_folder("features", "settings", packages=("torch",)) == before
    assert stage_folder("features", "settings", packages=("numpy",)) != before
    real = package_versions.__wrapped__

    def upgraded(*names):
        return {**real(*names), **({"torch": "99.0"} if "torch" in names else {})}

    monkeypatch.setattr("deepfake.stages.package_versions", upgraded)
    assert stage_folder("features", "settings", packages=("torch",)) != before
    assert stage_folder("masks", "settings", packages=("numpy",)) == stage_folder(
        "masks", "settings", packages=("numpy",)
    )


@pytest.mark.parametrize("model", ["dir", "hub"])
def test_the_sd2_weights_revision_names_the_inpainting_folder(tmp_path: Path, model: str) -> None:
    from deepfake.inpaint.sd2 import model_revision

    if model == "hub":
        assert model_revision("someone/not-cached-here").endswith("@unresolved")
        # weights on another machine (the GPU workers'), planned from this one: no error
        assert model_revision("/home/worker/.cache/tiny-sd2") == (
            "dir:/home/worker/.cache/tiny-sd2@elsewhere"
        )
        return
    weights = tmp_path / "sd2"
    (weights / "unet").mkdir(parents=True)
    (weights / "model_index.json").write_text('{"_class_name": "StableDiffusionInpaintPipeline"}')
    (weights / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    first = model_revision(str(weights))
    assert model_revision(str(weights)) == first
    (weights / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 65)
    assert model_revision(str(weights)) != first  # retrained weights: a new revision
