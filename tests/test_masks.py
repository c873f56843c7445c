from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepfake.config import DataConfig, MaskConfig
from deepfake.images import encode_png
from deepfake.masks.shapes import MASK_TYPES, make_mask
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.storage import Storage


@pytest.mark.parametrize(("h", "w"), [(64, 64), (48, 80), (101, 37)])
def test_diagonal_masks_cover_the_named_half(h: int, w: int) -> None:
    masks = {t: make_mask(t, h, w, "s", 0) > 0 for t in MASK_TYPES if t != "random"}
    for mask in masks.values():
        assert abs(mask.mean() - 0.5) < 0.05
    # Each name says which corner lies in the white half.
    assert masks["diagonal_upper_left"][0, 0] and not masks["diagonal_upper_left"][-1, -1]
    assert masks["diagonal_lower_right"][-1, -1] and not masks["diagonal_lower_right"][0, 0]
    assert masks["diagonal_upper_right"][0, -1] and not masks["diagonal_upper_right"][-1, 0]
    assert masks["diagonal_lower_left"][-1, 0] and not masks["diagonal_lower_left"][0, -1]
    # Each diagonal splits the image into two exact complements.
    assert np.array_equal(masks["diagonal_upper_left"], ~masks["diagonal_lower_right"])
    assert np.array_equal(masks["diagonal_upper_right"], ~masks["diagonal_lower_left"])


@pytest.mark.parametrize("source", [f"src{i}" for i in range(25)])
def test_random_mask_coverage_and_rectangles(source: str) -> None:
    mask = make_mask("random", 128, 96, source, 0)
    assert set(np.unique(mask)) <= {0, 255}
    assert 0.40 <= (mask > 0).mean() <= 0.60


def test_masks_are_deterministic_byte_for_byte() -> None:
    first = encode_png(make_mask("random", 64, 64, "a", 3))
    assert first == encode_png(make_mask("random", 64, 64, "a", 3))
    assert first != encode_png(make_mask("random", 64, 64, "b", 3))
    assert first != encode_png(make_mask("random", 64, 64, "a", 4))


def test_unknown_mask_type_is_refused() -> None:
    with pytest.raises(ValueError, match="triangle"):
        make_mask("triangle", 8, 8, "s", 0)


def test_mask_stage_writes_five_masks_per_source(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=4, image_size=64))
    out = make_masks(store, MaskConfig(), sources)
    frame = store.read_parquet(out.manifest)
    assert len(frame) == 20
    assert (frame["label"] == 1).all()
    assert frame.groupby("source_id")["variant"].apply(set).map(len).eq(5).all()
    other = Storage(tmp_path / "other")
    again = make_masks(
        other, MaskConfig(), prepare_sources(other, DataConfig(limit=4, image_size=64))
    )
    assert list(other.read_parquet(again.manifest)["sha256"]) == list(frame["sha256"])
    assert again.digest == out.digest
