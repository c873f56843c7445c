from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake.config import DataConfig, FeaturesConfig, InpaintConfig, MaskConfig
from deepfake.features import extractor as extractor_module
from deepfake.features.backbones import BACKBONES, WeightsUnavailable, efficientnet_lite0
from deepfake.features.extractor import FeatureExtractor
from deepfake.features.forensics import (
    FORENSIC_CHANNELS,
    as_batch,
    band_energy,
    duplicate_map,
    duplicate_maps,
    grey,
    residual_energy,
)
from deepfake.features.stage import cell_matrix, extract_features, sample_cells, with_cells
from deepfake.hashing import sha256
from deepfake.inpaint.stage import run_inpaint
from deepfake.masks.stage import make_masks
from deepfake.sources.sample import photo_path
from deepfake.sources.stage import prepare_sources
from deepfake.storage import Storage


def test_default_backbone_has_real_imagenet_weights() -> None:
    model = efficientnet_lite0(classifier=True).eval()
    cat = Image.open(photo_path("skimage.data", "chelsea.png")).convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.array(cat)).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        top = model((x - 0.5) / 0.5).argmax(1).item()
    assert top == 285  # ImageNet "Egyptian cat"


def test_extractor_gives_one_vector_per_image(textured: np.ndarray) -> None:
    extractor = FeatureExtractor("efficientnet_lite0", input_size=96, device="cpu")
    out = extractor.transform([textured, textured[::-1].copy(), textured])
    assert out.shape == (3, 16 + 24 + 40 + 112 + 320) == (3, extractor.dim)
    assert out.dtype == np.float32
    assert np.allclose(out[0], out[2], atol=1e-5)
    assert not np.allclose(out[0], out[1], atol=1e-3)


def test_multiscale_vector_is_the_mean_of_each_stage_map(textured: np.ndarray) -> None:
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu")
    x = extractor.preprocess([textured])
    with torch.inference_mode():
        maps = extractor.model.forward_intermediates(x, intermediates_only=True)
    expected = torch.cat([m.mean(dim=(2, 3)) for m in maps], 1).numpy()
    assert [m.shape[1] for m in maps] == list(extractor.spec.stage_channels)
    assert np.allclose(extractor.transform([textured]), expected, rtol=1e-4, atol=1e-4)


def test_cell_features_are_the_stage_maps_over_each_cell(textured: np.ndarray) -> None:
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu", cell=8)
    cells = extractor.cells([textured, textured])
    assert extractor.grid(64, 64) == (8, 8)
    assert cells.shape == (2, 8, 8, extractor.dim + len(FORENSIC_CHANNELS))
    x = extractor.preprocess([textured])
    with torch.inference_mode():
        maps = extractor.model.forward_intermediates(x, intermediates_only=True)
    # Stage 2 has stride 4: cell (row 3, column 5) is its 2x2 block at (6, 10).
    stage2 = maps[1][0, :, 6:8, 10:12].mean((1, 2)).numpy()
    start = extractor.spec.stage_channels[0]
    got = cells[0, 3, 5, start : start + extractor.spec.stage_channels[1]]
    assert np.allclose(got, stage2, rtol=1e-3, atol=1e-3 * np.abs(stage2).max())


@pytest.mark.parametrize("relative_stages", [0, 2, 5])
def test_chosen_cells_are_those_cells_of_every_cell(textured: np.ndarray, relative_stages) -> None:
    # 64 px at cells of 4: a 16x16 grid, finer than the last two stages (interpolated there, at
    # the chosen cells only; with 5 relative stages, at every cell for the image's median).
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu", cell=4,
                                 relative_stages=relative_stages)  # fmt: skip
    images = [textured, textured[::-1].copy(), np.ascontiguousarray(textured.transpose(1, 0, 2))]
    keep = [np.array([0, 17, 255]), np.array([], np.int64), np.array([200, 3, 3, 100])]
    every = extractor.cells(images).reshape(3, -1, extractor.cell_dim)
    chosen = extractor.chosen_cells(images, keep)
    assert [c.shape for c in chosen] == [(3, extractor.cell_dim), (0, extractor.cell_dim),
                                         (4, extractor.cell_dim)]  # fmt: skip
    for got, cells, index in zip(chosen, every, keep, strict=True):
        # The interpolation at chosen cells adds in another order: equal to float32 rounding.
        assert np.allclose(got, cells[index], rtol=1e-5, atol=1e-6 * np.abs(every).max())


@pytest.mark.parametrize("relative_stages", [0, 2])
def test_projected_cells_are_every_cell_times_the_weights(textured, relative_stages) -> None:
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu", cell=4,
                                 relative_stages=relative_stages)  # fmt: skip
    images = [textured, textured[::-1].copy()]
    weights = np.random.default_rng(0).standard_normal((extractor.cell_dim, 3))
    want = extractor.cells(images).reshape(2, -1, extractor.cell_dim) @ weights
    got = extractor.project(images, weights)
    assert got.shape == (2, 256, 3) and got.dtype == np.float32
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert extractor.project([], weights).shape == (0, 1, 3)
    with pytest.raises(ValueError, match=f"weights for {extractor.cell_dim - 1} features a cell"):
        extractor.project(images, weights[1:])


def test_passes_through_the_backbone_give_what_one_pass_gives(textured, monkeypatch) -> None:
    # Five 64 px images in passes of two (the last of one) on a CPU, against one pass.
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu", cell=8)
    images = [np.roll(textured, 7 * i, axis=i % 2).copy() for i in range(5)]
    keep = [np.array([i, 63 - i]) for i in range(5)]
    weights = np.random.default_rng(0).standard_normal((extractor.cell_dim, 2))
    whole = extractor.cells(images), extractor.chosen_cells(images, keep)
    projected = extractor.project(images, weights)
    # Other batch shapes, other convolution kernels: equal to float32 rounding.
    tolerance = {"rtol": 1e-4, "atol": 1e-4 * float(np.abs(whole[0]).max())}
    assert extractor.pass_size(64, 64) >= 5
    monkeypatch.setattr(extractor_module, "CPU_PASS_PIXELS", 2 * 64 * 64 + 1)
    assert extractor.pass_size(64, 64) == 2
    assert np.allclose(extractor.cells(images), whole[0], **tolerance)
    chosen = extractor.chosen_cells(images, keep)
    assert [len(c) for c in chosen] == [2] * 5
    for got, want in zip(chosen, whole[1], strict=True):
        assert np.allclose(got, want, **tolerance)
    got = extractor.project(images, weights)
    assert np.allclose(got, projected, rtol=1e-4, atol=1e-4 * float(np.abs(projected).max()))
    # The pass follows the backbone's input: resized to 256 px, one image a pass at this budget.
    resized = FeatureExtractor("efficientnet_lite0", device="cpu", input_size=256)
    assert resized.pass_size(64, 64) == 1


_HEAP_PROBE = """
import ctypes, sys
from deepfake.devices import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                 "keepcost").split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "inpaint":  # the classical backend keeps it too
    from deepfake.inpaint.classical import ClassicalInpainter

    ClassicalInpainter()
    from deepfake import devices

    kept = devices._kept
else:
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2()
block = libc.malloc(20 << 20)  # an activation of 20 MiB
mapped = libc.mallinfo2().hblkhd - before.hblkhd
libc.free(block)
print(kept, mapped >> 20, libc.mallinfo2().fordblks >> 20)
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_freed_activations_stay_with_the_process() -> None:
    def probe(mode: str, **env: str) -> list[str]:
        run = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True,
                             text=True, check=True, env={**os.environ, **env})  # fmt: skip
        return run.stdout.split()

    # glibc's default: a 20 MiB block is mapped afresh and handed back when freed.
    assert probe("default") == ["None", "20", "0"]
    # Kept: served from the heap, and still there for the next pass once freed.
    kept, mapped, free = probe("keep")
    assert (kept, mapped) == ("True", "0") and int(free) >= 20
    assert probe("inpaint")[:2] == ["True", "0"]
    # A user's own setting is left alone.
    assert probe("keep", MALLOC_TRIM_THRESHOLD_="1048576")[:2] == ["False", "20"]


def test_copied_texture_is_marked_and_a_straight_edge_is_not(textured: np.ndarray) -> None:
    noise = np.random.default_rng(0).integers(-12, 12, textured.shape)
    image = np.clip(textured + noise, 0, 255).astype(np.uint8)  # camera noise: texture anywhere
    image[40:56, 8:24] = image[4:20, 36:52]  # a 16x16 patch copied elsewhere
    marked = duplicate_map(image)
    assert marked[40:56, 8:24].mean() == 1.0 and marked[4:20, 36:52].mean() == 1.0
    assert marked.mean() < 0.2  # the rest of a photo repeats nothing
    assert duplicate_map(textured).mean() < 0.01
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, 32:] = 200  # every 4x4 window across the edge is the same: not a copy
    assert duplicate_map(edge).sum() == 0
    # The cells' copy channel is that map pooled per cell.
    cells = FeatureExtractor("efficientnet_lite0", device="cpu").cells([image])[0]
    copies = cells[..., -len(FORENSIC_CHANNELS) + FORENSIC_CHANNELS.index("copies_mean")]
    assert copies[5, 1] == 1.0 and copies[5:7, 1:3].mean() == 1.0


def reference_duplicates(image: np.ndarray, patch: int = 4, min_offset: int = 8) -> np.ndarray:
    """The copy search written plainly: windows grouped by their exact bytes, one image."""
    values = image.astype(np.float64)
    groups: dict[bytes, list[tuple[int, int]]] = {}
    for y in range(image.shape[0] - patch + 1):
        for x in range(image.shape[1] - patch + 1):
            w = values[y : y + patch, x : x + patch]
            down = np.abs(np.diff(w, axis=0)).mean()
            across = np.abs(np.diff(w, axis=1)).mean()
            if w.std() > 3.0 and down > 0.5 and across > 0.5:
                groups.setdefault(image[y : y + patch, x : x + patch].tobytes(), []).append((y, x))
    out = np.zeros(image.shape[:2], np.float32)
    for places in groups.values():
        ys, xs = np.array(places).T
        if np.ptp(ys) ** 2 + np.ptp(xs) ** 2 >= min_offset**2:
            for y, x in places:
                out[y : y + patch, x : x + patch] = 1.0
    return out


def test_batched_copy_search_is_the_plain_search_image_by_image(textured: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    first = np.clip(textured + rng.integers(-12, 12, textured.shape), 0, 255).astype(np.uint8)
    first[40:52, 8:20] = first[4:16, 36:48]  # copied within the image
    second = np.clip(textured[::-1] + rng.integers(-12, 12, textured.shape), 0, 255)
    second = second.astype(np.uint8)
    second[20:32, 20:32] = first[4:16, 36:48]  # the same patch, once: no copy within second
    third = np.tile(rng.integers(0, 255, (8, 8, 3)), (8, 8, 1)).astype(np.uint8)  # repeats
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, 30:] = 200  # the same windows all along the edge, but no texture: never copies
    # One 4x4 patch, twice in each of two images: far apart in one (a copy), 6 pixels apart in
    # the other (not a copy). Their windows share a key across the images: the groups must not.
    patch = rng.integers(0, 255, (4, 4, 3)).astype(np.uint8)
    far, near = (np.clip(textured + rng.integers(-12, 12, textured.shape), 0, 255).astype(np.uint8)
                 for _ in range(2))  # fmt: skip
    far[4:8, 4:8] = far[40:44, 40:44] = patch
    near[10:14, 10:14] = near[10:14, 16:20] = patch
    batch = [first, second, third, edge, far, near]
    got = duplicate_maps(as_batch(batch)).numpy()
    for image, marked in zip(batch, got, strict=True):
        assert np.array_equal(marked, reference_duplicates(image))
    assert got[0].mean() > 0.05 and got[1].sum() == 0 and got[2].mean() == 1.0
    assert got[3].sum() == 0 and got[4].sum() > 0 and got[5].sum() == 0


def test_copy_search_in_an_image_of_more_windows_than_the_small_key_holds(textured) -> None:
    # 160 x 160: 24,649 windows, an index of 15 bits (the key's hash keeps 47).
    rng = np.random.default_rng(5)
    image = np.tile(textured, (3, 3, 1))[:160, :160]
    image = np.clip(image + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)
    image[140:152, 130:142] = image[4:16, 6:18]  # corner to corner
    got = duplicate_map(image)
    assert np.array_equal(got, reference_duplicates(image))
    assert got[140:152, 130:142].mean() == 1.0 and got.mean() < 0.05


def test_noise_maps_are_opencvs(textured: np.ndarray) -> None:
    import cv2

    image = np.ascontiguousarray(textured[:48, :40])  # not square: rows and columns apart
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    ours = grey(as_batch([image]))
    assert np.array_equal(ours[0, 0].numpy(), gray.astype(np.float32))
    laplacian = np.abs(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F))
    assert np.array_equal(residual_energy(ours)[0, 0].numpy(), laplacian)
    g = gray.astype(np.float32)
    dog = np.abs(cv2.GaussianBlur(g, (0, 0), 1.0) - cv2.GaussianBlur(g, (0, 0), 2.5))
    assert np.allclose(band_energy(ours)[0, 0].numpy(), dog, atol=1e-3)


def test_training_cells_are_half_inside_the_region_half_clean() -> None:
    coverage = np.zeros((8, 8))
    coverage[2:4, 2:4] = 1.0  # 4 cells inside
    coverage[4, 2:4] = 0.3  # edge cells: never sampled
    chosen = sample_cells(coverage, 12, seed=1)
    flat = coverage.ravel()[chosen]
    assert len(chosen) == 12 and (flat == 1.0).sum() == 4 and (flat == 0).sum() == 8
    assert np.array_equal(chosen, sample_cells(coverage, 12, seed=1))
    real = sample_cells(np.zeros((8, 8)), 12, seed=1)
    assert len(real) == 12 and len(set(real)) == 12


def test_torchvision_backbone_without_weights_names_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):  # the network is outside: fail as a refused download does
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable) as err:
        BACKBONES["resnet50"].build()
    expected = tmp_path / "hub" / "checkpoints"
    assert str(expected) in str(err.value) and "resnet50-" in str(err.value)


def test_torchvision_backbone_loads_weights_from_torch_home(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    target = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), target)
    model = BACKBONES["resnet50"].build().eval()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 64))
        stages = BACKBONES["resnet50"].stages(model, torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 2048)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert tuple(s.shape[1] for s in stages) == BACKBONES["resnet50"].stage_channels


def test_feature_stage_keeps_manifest_columns(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=2, image_size=48))
    masks = make_masks(store, MaskConfig(), sources)
    dataset = run_inpaint(store, InpaintConfig(), sources, masks)
    frozen = FeaturesConfig(input_size=64, batch_size=5, finetune_epochs=0, cells_per_image=6)
    out = extract_features(store, frozen, dataset)
    frame = with_cells(store, out)
    info = store.read_json(f"{out.folder}/features.json")
    assert len(frame) == len(store.read_parquet(dataset.manifest))
    # The cells are stored once, in the batches' parts; the manifest says which part has each.
    manifest = store.read_parquet(out.manifest)
    assert "cells" not in manifest and set(manifest["part"]) == {
        f"parts/{name}" for name in store.list_files(f"{out.folder}/parts")
    }
    for part, digest in zip(manifest["part"], manifest["part_sha256"], strict=True):
        assert sha256(store.read_bytes(f"{out.folder}/{part}")) == digest
    assert {"record_id", "group", "variant", "label", "uri", "sha256"} <= set(frame.columns)
    assert (info["cell_dim"], info["image_size"], info["weights"]) == (
        512 + len(FORENSIC_CHANNELS),
        48,
        None,
    )
    cells, coverage, rows = cell_matrix(frame, info["cell_dim"])
    assert cells.shape == (6 * len(frame), info["cell_dim"]) and np.isfinite(cells).all()
    assert all(tuple(g) == (8, 8) for g in frame["grid"])  # 64 px input, 8 px cells
    fakes = frame["label"].to_numpy()[rows] == 1
    assert (coverage[~fakes] == 0).all()
    inside = coverage[fakes] >= 0.5
    assert inside.sum() > 0.3 * fakes.sum() and inside.sum() <= 0.5 * fakes.sum()  # up to half
    assert ((coverage == 0) | (coverage >= 0.5)).all()  # never an edge cell
    # Batch size is how fast, not what: another batch size reuses the same finished output...
    assert extract_features(store, frozen.model_copy(update={"batch_size": 3}), dataset) == out
    # ... and computes the same cells from scratch, in a storage root of its own.
    other = Storage(tmp_path / "other")
    again_sources = prepare_sources(other, DataConfig(limit=2, image_size=48))
    again_dataset = run_inpaint(other, InpaintConfig(), again_sources,
                                make_masks(other, MaskConfig(), again_sources))  # fmt: skip
    redone = extract_features(other, frozen.model_copy(update={"batch_size": 3}), again_dataset)
    assert len(other.list_files(f"{redone.folder}/parts")) == -(-len(frame) // 3)
    theirs = with_cells(other, redone)
    assert list(theirs["record_id"]) == list(frame["record_id"])
    for column in ("cell_index", "cell_coverage"):
        assert theirs[column].map(list).tolist() == frame[column].map(list).tolist()
    assert theirs["cells"].tolist() == frame["cells"].tolist()


class ReadLog(Storage):
    """Local storage that remembers every path it was asked to read."""

    reads: list[str]

    def read_many(self, uris: list[str]) -> list:
        self.reads = [*getattr(self, "reads", []), *uris]
        return super().read_many(uris)


@pytest.fixture(scope="module")
def split_dataset(tmp_path_factory):
    from deepfake.config import SplitConfig
    from deepfake.split import split_dataset

    store = ReadLog(tmp_path_factory.mktemp("finetune"))
    sources = prepare_sources(store, DataConfig(limit=12, image_size=48))
    masks = make_masks(store, MaskConfig(), sources)
    dataset = run_inpaint(store, InpaintConfig(backend="classical"), sources, masks)
    return store, split_dataset(store, SplitConfig(test_size=0.3), dataset)


TUNED = FeaturesConfig(finetune_epochs=2, finetune_batch_size=8, batch_size=16)


def test_fine_tuning_sees_the_training_split_only(split_dataset) -> None:
    from deepfake.features import WEIGHTS_FILE, FeatureExtractor, read_weights
    from deepfake.features.stage import output_folder
    from deepfake.hashing import sha256

    store, split = split_dataset
    frame = store.read_parquet(split.manifest)
    test_uris = set(frame.loc[frame["split"] == "test", "uri"])
    assert test_uris
    store.delete(output_folder(TUNED, split))  # made by another test of the module, perhaps
    store.reads = []
    out = extract_features(store, TUNED, split)
    info = store.read_json(f"{out.folder}/features.json")
    masks = [m for m in frame["mask_uri"] if m]
    extraction = len(frame) + len(masks)  # after fine-tuning: every image and mask, once
    tuning_reads = store.reads[:-extraction]
    assert len(tuning_reads) == 2 * (frame["split"] == "train").sum()  # two epochs
    assert not test_uris & set(tuning_reads)
    assert sorted(store.reads[-extraction:]) == sorted([*frame["uri"], *masks])
    weights = store.read_bytes(f"{out.folder}/{WEIGHTS_FILE}")
    assert info["weights_sha256"] == sha256(weights) and len(info["finetune"]["losses"]) == 2
    tuned = FeatureExtractor.from_info(info, read_weights(weights), device="cpu")
    imagenet = FeatureExtractor("efficientnet_lite0", device="cpu")
    first = next(iter(imagenet.model.state_dict()))
    assert not torch.equal(tuned.model.state_dict()[first], imagenet.model.state_dict()[first])
    # The saved cells are what the saved backbone computes.
    image = np.asarray(Image.open(store.uri(frame["uri"].iloc[0])))
    manifest = with_cells(store, out)
    stored, _, rows = cell_matrix(manifest, info["cell_dim"])
    every = tuned.cells([image])[0].reshape(-1, info["cell_dim"])
    want = every[np.asarray(manifest["cell_index"].iloc[0])]
    assert np.allclose(stored[rows == 0], want, rtol=1e-2, atol=1e-2)  # stored as float16


def test_fine_tuning_cells_reads_the_training_masks_only(split_dataset) -> None:
    from deepfake.features.stage import output_folder

    store, split = split_dataset
    cells = TUNED.model_copy(update={"finetune_target": "cells", "finetune_epochs": 1})
    frame = store.read_parquet(split.manifest)
    train = frame[frame["split"] == "train"]
    store.delete(output_folder(cells, split))
    store.reads = []
    out = extract_features(store, cells, split)
    extraction = len(frame) + int((frame["mask_uri"] != "").sum())
    tuned = sorted(store.reads[:-extraction])
    assert tuned == sorted([*train["uri"], *(m for m in train["mask_uri"] if m)])
    info = store.read_json(f"{out.folder}/features.json")["finetune"]
    assert info["target"] == "cells" and "mask" in info["augmentation"]
    image = extract_features(store, TUNED.model_copy(update={"finetune_epochs": 1}), split)
    weights = [store.read_json(f"{o.folder}/features.json")["weights_sha256"] for o in (out, image)]
    assert weights[0] != weights[1]


def test_fine_tuning_is_reproducible(split_dataset) -> None:
    store, split = split_dataset
    out = extract_features(store, TUNED, split)
    first = store.read_json(f"{out.folder}/features.json")["weights_sha256"]
    store.delete(out.folder)
    again = extract_features(store, TUNED, split)
    assert store.read_json(f"{again.folder}/features.json")["weights_sha256"] == first


def test_fine_tuning_without_a_split_is_refused(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=2, image_size=48))
    dataset = run_inpaint(store, InpaintConfig(), sources, make_masks(store, MaskConfig(), sources))
    with pytest.raises(ValueError, match="split"):
        extract_features(store, TUNED, dataset)


def test_a_stage_whose_weights_file_or_part_is_gone_is_not_finished(split_dataset) -> None:
    from deepfake.features import WEIGHTS_FILE
    from deepfake.stages import finished

    store, split = split_dataset
    out = extract_features(store, TUNED, split)
    assert finished(store, "features", out.folder) == out
    store.delete(f"{out.folder}/{WEIGHTS_FILE}")
    assert finished(store, "features", out.folder) is None
    assert extract_features(store, TUNED, split) == out  # redone, byte for byte
    cells = with_cells(store, out)["cells"].tolist()
    part = sorted(store.list_files(f"{out.folder}/parts"))[0]
    store.delete(f"{out.folder}/parts/{part}")  # the cells of one batch
    assert finished(store, "features", out.folder) is None
    assert extract_features(store, TUNED, split) == out
    assert with_cells(store, out)["cells"].tolist() == cells
    # A part whose bytes are not those the manifest's digest names is refused, by name.
    other = sorted(store.list_files(f"{out.folder}/parts"))[1]
    store.write_bytes(f"{out.folder}/parts/{part}", store.read_bytes(f"{out.folder}/parts/{other}"))
    with pytest.raises(OSError, match=f"parts/{part} \\(its sha256 is not the one"):
        with_cells(store, out)
    store.delete(f"{out.folder}/parts/{part}")  # as the error says
    assert extract_features(store, TUNED, split) == out
    assert with_cells(store, out)["cells"].tolist() == cells


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_folding_batch_norms_keeps_the_function(name: str) -> None:
    import copy

    import torchvision

    from deepfake.features.extractor import fold_batchnorm

    torch.manual_seed(0)
    if name == "resnet50":  # random weights: the ImageNet file is not needed for this check
        model = torchvision.models.resnet50().eval()
        for m in model.modules():  # non-trivial statistics, as trained ones are
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    else:
        model = efficientnet_lite0().eval()
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    stages = BACKBONES[name].stages
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        for want, got in zip(stages(model, x), stages(folded, x), strict=True):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


@pytest.mark.parametrize("groups", [1, 8])
@pytest.mark.parametrize("kernel", [3, 5])
def test_same_padding_without_a_pad_gives_timms_outputs(kernel: int, groups: int) -> None:
    from timm.layers.conv2d_same import Conv2dSame

    from deepfake.features.same_padding import StaticSameConv

    torch.manual_seed(0)
    for stride in (1, 2):
        conv = Conv2dSame(8, 16, kernel, stride=stride, groups=groups).eval()
        static = StaticSameConv(conv)
        # Even sides pad one pixel more at the end, odd ones alike; a non-square map has both.
        for size in [(16, 16), (17, 17), (16, 15), (7, 6), (2, 3)]:
            x = torch.randn(2, 8, *size).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                want, got = conv(x), static(x)
            assert got.shape == want.shape, (stride, size)
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_lite0s_inference_copy_pads_no_activation() -> None:
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu")
    # 100 px: sides 50, 25, 13, 7 on the way, where SAME pads evenly and unevenly.
    x = extractor.preprocess([np.random.default_rng(0).integers(0, 256, (100, 100, 3), np.uint8)])
    model = extractor.inference_model(x)
    assert model is not extractor.model  # the checked copy, not the fallback
    assert not any(type(m).__name__ == "Conv2dSame" for m in model.modules())
    assert sum(type(m).__name__ == "StaticSameConv" for m in model.modules()) == 5
    with torch.inference_mode():
        maps = zip(extractor._maps(extractor.model, x), extractor._maps(model, x), strict=True)
        for want, got in maps:
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_an_interrupted_stage_redoes_only_unfinished_batches(split_dataset) -> None:
    from deepfake.features.stage import FINETUNE_FILE

    store, split = split_dataset
    cfg = TUNED.model_copy(update={"batch_size": 7})
    store.delete(extract_features(store, cfg, split).folder)  # no parts left from other tests
    out = extract_features(store, cfg, split)
    cells = with_cells(store, out)["cells"].tolist()
    parts = sorted(store.list_files(f"{out.folder}/parts"))
    assert len(parts) == -(-split.records // 7)
    # As a kill leaves it: no manifest, the last batches never written.
    store.delete(out.manifest)
    for name in parts[-2:]:
        store.delete(f"{out.folder}/parts/{name}")
    before = {n: Path(store.uri(f"{out.folder}/parts/{n}")).stat().st_mtime_ns for n in parts[:-2]}
    tuning = Path(store.uri(f"{out.folder}/{FINETUNE_FILE}")).stat().st_mtime_ns
    store.reads = []
    again = extract_features(store, cfg, split)
    assert again == out  # the same manifest, byte for byte
    after = {n: Path(store.uri(f"{out.folder}/parts/{n}")).stat().st_mtime_ns for n in parts[:-2]}
    assert after == before  # finished batches untouched
    assert Path(store.uri(f"{out.folder}/{FINETUNE_FILE}")).stat().st_mtime_ns == tuning
    frame = store.read_parquet(split.manifest)
    train = set(frame.loc[frame["split"] == "train", "uri"])
    assert not set(store.reads) - set(frame["uri"]) - set(frame["mask_uri"])
    redone = [uri for uri in store.reads if uri in set(frame["uri"])]
    assert len(redone) == len(frame) - 7 * (len(parts) - 2)  # no fine-tuning pass
    assert not train & set(redone) - set(frame["uri"].iloc[7 * (len(parts) - 2) :])
    assert with_cells(store, again)["cells"].tolist() == cells  # and the same cells
