from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepfake.config import DataConfig, MaskConfig
from deepfake.images import encode_png
from deepfake.masks.shapes import MASK_TYPES, ORIGINAL_TYPES, make_mask
from deepfake.masks.stage import make_masks
from deepfake.sources.stage import prepare_sources
from deepfake.storage import Storage


@pytest.mark.parametrize(("h", "w"), [(64, 64), (48, 80), (101, 37)])
def test_diagonal_masks_cover_the_named_half(h: int, w: int) -> None:
    masks = {t: make_mask(t, h, w, "s", 0) > 0 for t in ORIGINAL_TYPES if t != "random"}
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
    # The white region is the union of the rectangles drawn (each W/16-W/4 by H/16-H/4), every
    # one kept but those that would have taken it over 60 %.
    from deepfake.masks.shapes import random_rectangles

    class Recording:  # the generator the mask uses, with every draw written down
        def __init__(self, seed: int) -> None:
            self.rng, self.draws = np.random.default_rng(seed), []

        def uniform(self, *args):
            return self.rng.uniform(*args)

        def integers(self, *args):
            self.draws.append(int(self.rng.integers(*args)))
            return self.draws[-1]

    recording = Recording(7)
    height, width = 128, 96
    mask = random_rectangles(height, width, recording)
    rebuilt = np.zeros((height, width), bool)
    for w, h, x0, y0 in zip(*[iter(recording.draws)] * 4, strict=True):
        assert width // 16 <= w <= width // 4 and height // 16 <= h <= height // 4
        trial = rebuilt.copy()
        trial[y0 : y0 + h, x0 : x0 + w] = True
        if trial.mean() <= 0.60:
            rebuilt = trial
    assert np.array_equal(mask > 0, rebuilt)


def test_masks_are_deterministic_byte_for_byte() -> None:
    first = encode_png(make_mask("random", 64, 64, "a", 3))
    assert first == encode_png(make_mask("random", 64, 64, "a", 3))
    assert first != encode_png(make_mask("random", 64, 64, "b", 3))
    assert first != encode_png(make_mask("random", 64, 64, "a", 4))


def test_unknown_mask_type_is_refused() -> None:
    with pytest.raises(ValueError, match="triangle"):
        make_mask("triangle", 8, 8, "s", 0)


@pytest.mark.parametrize("family", ["ellipse", "blob", "brush", "freeform"])
def test_the_edits_users_meet_cover_2_to_30_percent(family: str) -> None:
    areas = []
    for i in range(40):
        mask = make_mask(family, 128, 96, f"src{i}", 0)
        assert set(np.unique(mask)) <= {0, 255}
        areas.append((mask > 0).mean())
    assert min(areas) >= 0.02 and max(areas) <= 0.30
    assert np.mean(np.array(areas) < 0.10) > 0.2  # small edits are common, not a corner case
    assert len({round(a, 3) for a in areas}) > 30  # shapes and sizes vary


def test_the_original_five_are_kept_and_every_family_is_on_by_default() -> None:
    assert ORIGINAL_TYPES == ("diagonal_upper_left", "diagonal_upper_right", "diagonal_lower_left",
                              "diagonal_lower_right", "random")  # fmt: skip
    assert set(MaskConfig().types) == set(MASK_TYPES) and len(MASK_TYPES) == 9


def test_mask_stage_writes_every_chosen_type_per_source(tmp_path: Path) -> None:
    store = Storage(tmp_path)
    sources = prepare_sources(store, DataConfig(limit=4, image_size=64))
    out = make_masks(store, MaskConfig(), sources)
    frame = store.read_parquet(out.manifest)
    assert len(frame) == 36
    assert (frame["label"] == 1).all()
    assert frame.groupby("source_id")["variant"].apply(set).map(len).eq(9).all()
    chosen = make_masks(store, MaskConfig(types=("ellipse", "brush")), sources)
    assert set(store.read_parquet(chosen.manifest)["variant"]) == {"ellipse", "brush"}
    other = Storage(tmp_path / "other")
    again = make_masks(
        other, MaskConfig(), prepare_sources(other, DataConfig(limit=4, image_size=64))
    )
    assert list(other.read_parquet(again.manifest)["sha256"]) == list(frame["sha256"])
    assert again.digest == out.digest
