from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake.config import DataConfig, InpaintConfig, MaskConfig
from deepfake.data import run_sources
from deepfake.inpaint import make_inpainter, plan_batches, run_batch, run_inpaint
from deepfake.inpaint.classical import ClassicalInpainter
from deepfake.masks import make_mask, run_masks
from deepfake.storage import Storage


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_classical_fills_only_the_mask(textured: np.ndarray, method: str) -> None:
    mask = make_mask("random", 64, 64, "x", 0)
    (out,) = ClassicalInpainter(method).inpaint([textured], [mask], [0])
    assert out.shape == textured.shape and out.dtype == np.uint8
    outside = mask == 0
    assert np.array_equal(out[outside], textured[outside])
    assert np.abs(out[~outside].astype(int) - textured[~outside]).mean() > 5


def test_classical_refuses_mismatched_sizes(textured: np.ndarray) -> None:
    with pytest.raises(ValueError, match="differ"):
        ClassicalInpainter().inpaint([textured], [np.zeros((8, 8), np.uint8)], [0])


@pytest.fixture
def staged(tmp_path: Path):
    store = Storage(tmp_path)
    sources = run_sources(store, DataConfig(limit=3, image_size=48))
    masks = run_masks(store, MaskConfig(), sources)
    return store, sources, masks


class Counting(ClassicalInpainter):
    """The real classical backend, counting the images it is asked to fill."""

    calls = 0

    def inpaint(self, images, masks, seeds):
        Counting.calls += len(images)
        return super().inpaint(images, masks, seeds)


def test_stage_lists_real_and_inpainted_with_equal_format(staged) -> None:
    store, sources, masks = staged
    out = run_inpaint(store, InpaintConfig(batch_size=4), sources, masks)
    frame = store.read_parquet(out.manifest)
    assert (frame["variant"] == "real").sum() == 3 and (frame["label"] == 1).sum() == 15
    opened = [Image.open(f"{store.root}/{uri}") for uri in frame["uri"]]
    assert {(im.format, im.mode, im.size) for im in opened} == {("PNG", "RGB", (48, 48))}
    assert set(frame.loc[frame["label"] == 1, "backend"]) == {"classical"}


def test_interrupted_run_redoes_only_unfinished_batches(staged, monkeypatch) -> None:
    store, sources, masks = staged
    cfg = InpaintConfig(batch_size=4)
    folder, batches = plan_batches(store, cfg, sources, masks)
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    first = run_batch(store, ClassicalInpainter(), folder, batches[0])
    assert first["images"] == 4
    # A crash after writing an image but before its batch manifest: that image is redone.
    run_batch(store, ClassicalInpainter(), folder, batches[1][:1])
    store.delete(f"{folder}/batches")
    run_batch(store, ClassicalInpainter(), folder, batches[0])
    monkeypatch.setattr("deepfake.inpaint.make_inpainter", lambda cfg: Counting())
    Counting.calls = 0
    out = run_inpaint(store, cfg, sources, masks)
    assert Counting.calls == 11
    clean = Storage(store.root + "-clean")
    clean_sources = run_sources(clean, DataConfig(limit=3, image_size=48))
    clean_masks = run_masks(clean, MaskConfig(), clean_sources)
    uninterrupted = run_inpaint(clean, cfg, clean_sources, clean_masks)
    assert uninterrupted.digest == out.digest
    assert list(clean.read_parquet(uninterrupted.manifest)["sha256"]) == list(
        store.read_parquet(out.manifest)["sha256"]
    )


def test_finished_stage_is_reused_and_batch_size_does_not_change_outputs(staged) -> None:
    store, sources, masks = staged
    a = run_inpaint(store, InpaintConfig(batch_size=2), sources, masks)
    b = run_inpaint(store, InpaintConfig(batch_size=7), sources, masks)
    assert a == b


def test_unknown_backend_is_refused() -> None:
    cfg = InpaintConfig.model_construct(backend="magic")
    with pytest.raises(ValueError, match="magic"):
        make_inpainter(cfg)
