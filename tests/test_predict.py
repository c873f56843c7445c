"""Prediction as a user meets it: images the detector never saw, made with a method it was not
trained on, scored from the command line with heat maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake.config import load_settings
from deepfake.detector import train_detector
from deepfake.features.stage import extract_features
from deepfake.inpaint import run_inpaint
from deepfake.inpaint.exemplar import exemplar_fill
from deepfake.masks.stage import make_masks
from deepfake.predict import Detector
from deepfake.sources.stage import prepare_sources
from deepfake.split import split_dataset
from deepfake.storage import Storage
from flows.predict import main as predict

# Trained on diffusion fills only: the copy-based edits below are a method it never saw.
SETTINGS = [
    "data.limit=24",
    "data.image_size=64",
    "inpaint.backend=classical",
    "inpaint.classical.methods=[telea,ns]",
    "svm.alpha=[0.1]",
    "svm.top_k=[1,4]",
    "svm.cv_folds=2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Storage, str, list[np.ndarray]]:
    """A detector, and real images of photos it was not trained on."""
    store = Storage(tmp_path_factory.mktemp("predict"))
    cfg = load_settings(overrides=SETTINGS, storage=store.root)
    sources = prepare_sources(store, cfg.data)
    dataset = run_inpaint(store, cfg.inpaint, sources, make_masks(store, cfg.masks, sources))
    split = split_dataset(store, cfg.split, dataset)
    folder = train_detector(store, cfg.svm, extract_features(store, cfg.features, split)).folder
    frame = store.read_parquet(split.manifest)
    unseen = frame[(frame["split"] == "test") & (frame["label"] == 0)]
    images = [np.asarray(Image.open(store.uri(uri))) for uri in unseen["uri"][:4]]
    return store, folder, images


def small_copy_edit(image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An ellipse of about 5 % of the image filled by copying patches from the rest of it."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(image.shape[:2], np.uint8)
    cy, cx = rng.integers(16, 48, 2)
    yy, xx = np.mgrid[:64, :64]
    mask[((yy - cy) / 7) ** 2 + ((xx - cx) / 6) ** 2 <= 1] = 255
    return exemplar_fill(image, mask), mask


def test_small_copy_edits_of_a_method_never_trained_on_are_caught(
    trained, tmp_path: Path, capsys
) -> None:
    store, folder, images = trained
    incoming, maps = tmp_path / "incoming", tmp_path / "maps"
    incoming.mkdir()
    masks = {}
    for i, image in enumerate(images):
        edited, mask = small_copy_edit(image, i)
        assert 0.03 < (mask > 0).mean() < 0.08
        Image.fromarray(edited).save(incoming / f"edit{i}.png")
        Image.fromarray(image).save(incoming / f"real{i}.png")
        masks[f"edit{i}.png"] = mask
    (incoming / "zero.png").write_bytes(b"")
    code = predict(["--model", store.uri(folder), "--json", "--heatmaps", str(maps), str(incoming)])
    lines = capsys.readouterr().out.splitlines()
    results = {Path(r["path"]).name: r for r in map(json.loads, lines)}
    assert code == 1 and "empty file" in results["zero.png"]["error"]
    for name in masks:
        assert results[name]["label"] == "inpainted", results[name]
        assert results[name]["score"] > results[name.replace("edit", "real")]["score"]
    # The heat map puts the edit where it is: clearly hotter inside the edits than around them,
    # taken together, and hotter inside than around in most of them (one 5 % ellipse is two to
    # seven 8 px cells of a 64 px image, mostly partial; this detector saw 24 photos).
    detector = Detector.load(store, folder, device="cpu")
    inside, around = [], []
    for name, mask in masks.items():
        heat = detector.heat(np.asarray(Image.open(incoming / name)))
        assert heat.shape == mask.shape and ((heat >= 0) & (heat <= 1)).all()
        inside.append(heat[mask > 0].mean())
        around.append(heat[mask == 0].mean())
        assert Image.open(maps / f"{name}.heatmap.png").size == (64, 64)
    assert np.mean(inside) > np.mean(around) + 0.1, (inside, around)
    assert sum(i > a for i, a in zip(inside, around, strict=True)) >= 3, (inside, around)
    assert sorted(p.name for p in maps.iterdir()) == sorted(
        f"{n}.heatmap.png" for n in results if n != "zero.png"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{model}", "{missing}"], "error: {missing}: no such file or folder"),
        (["--model", "{nowhere}", "{images}"], "error: cannot load the detector at {nowhere}: "),
        (["--storage", "{nowhere}", "{images}"], "no detector has been published there"),
        (["--device", "cuda", "--model", "{model}", "{images}"], "no CUDA GPU is visible here"),
    ],
)
def test_predict_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message) -> None:
    import torch

    from flows.predict import main as predict

    if "cuda" in args and torch.cuda.is_available():
        args = [a.replace("cuda", "cuda:99") for a in args]  # a device this machine lacks
        message = "this machine has"
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    names = {"model": str(tmp_path / "models" / "latest"), "missing": str(tmp_path / "gone.png"),
             "nowhere": str(tmp_path / "nowhere"), "images": str(images)}  # fmt: skip
    code = predict([a.format(**names) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message.format(**names) in err and "Traceback" not in err
