"""The near-copy search (``deepfake/features/near_copies.py``) on a real photo with a patch
copied into it, compressed afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake.detector import copyrule
from deepfake.features.extractor import FeatureExtractor
from deepfake.features.forensics import FORENSIC_CHANNELS, as_batch
from deepfake.features.near_copies import (
    MIN_OFFSET,
    NEAR_COPY_CHANNELS,
    WINDOW,
    _decode,
    _try_neighbours_offsets,
    _windows,
    near_copy_cells,
    near_copy_maps,
    nearest_windows,
)
from deepfake.perturb import downscale, jpeg
from deepfake.sources.sample import SAMPLE_PHOTOS, photo_path


def _photo(side: int) -> np.ndarray:
    _, package, name = next(p for p in SAMPLE_PHOTOS if p[2] == "gravel.png")
    return np.asarray(Image.open(photo_path(package, name)).convert("RGB").resize((side, side)))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return _photo(128)


def _with_copy(photo: np.ndarray, size: int, source: int, target: int) -> np.ndarray:
    edited = photo.copy()
    edited[target : target + size, target : target + size] = photo[
        source : source + size, source : source + size
    ]
    return edited


def test_a_patch_copied_then_jpegd_is_found_and_the_photo_holds_few(photo: np.ndarray) -> None:
    edited = _with_copy(photo, 24, 10, 80)
    maps = near_copy_maps(as_batch([jpeg(80)(photo), jpeg(80)(edited)]))
    assert maps.shape == (2, 128, 128)
    centre = WINDOW // 2
    # The centres of the windows wholly inside the copy.
    inside = maps[1, 80 + centre : 101 + centre, 80 + centre : 101 + centre]
    assert inside.mean() >= 0.25
    assert maps[0].sum() < 0.2 * maps[1].sum()
    # One image at a time gives what the batch gives.
    alone = near_copy_maps(as_batch([jpeg(80)(edited)]))
    assert torch.equal(alone[0], maps[1])


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png"])
def test_photos_compressed_or_resized_hold_few_near_copies(name: str) -> None:
    """Their textures hold many near-matches (a fifth of chelsea.png's windows after JPEG 80,
    half after downscaling, have them all around), but at scattered offsets."""
    _, package, _ = next(p for p in SAMPLE_PHOTOS if p[2] == name)
    photo = np.asarray(Image.open(photo_path(package, name)).convert("RGB").resize((128, 128)))
    maps = near_copy_maps(as_batch([jpeg(80)(photo), downscale(0.5)(photo)]))
    assert maps.flatten(1).mean(1).max() < 0.01


def _exhaustive(v: torch.Tensor, cols: int) -> torch.Tensor:
    """Each window's nearest window at least MIN_OFFSET away, by brute force: (N,) distance."""
    ys, xs = torch.arange(len(v)) // cols, torch.arange(len(v)) % cols
    distance = torch.cdist(v, v).square()
    near = (ys[:, None] - ys) ** 2 + (xs[:, None] - xs) ** 2 < MIN_OFFSET**2
    return distance.masked_fill(near, float("inf")).min(1).values


def test_hashed_nearest_windows_are_real_and_find_the_copy_as_brute_force_does() -> None:
    edited = jpeg(80)(_with_copy(_photo(64), 16, 4, 40))
    v = _windows(as_batch([edited]))
    rows = cols = 64 - WINDOW + 1
    energy = (v * v).sum(2)
    best = nearest_windows(v, energy >= 9 * WINDOW * WINDOW, cols)
    _try_neighbours_offsets(v, best, rows, cols)
    distance, dy, dx = (t[0] for t in _decode(best))
    found = torch.isfinite(distance)
    assert found.float().mean() > 0.5
    # Every offset found is a real window that far, at the distance recorded...
    window = torch.arange(rows * cols)[found]
    target = (window // cols + dy[found]) * cols + window % cols + dx[found]
    assert ((dy[found] ** 2 + dx[found] ** 2) >= MIN_OFFSET**2).all()
    recomputed = (v[0, window] - v[0, target]).square().sum(1)
    assert torch.allclose(recomputed, distance[found], rtol=1e-5, atol=1e-3)
    # ...never nearer than brute force's, and as near for most windows wholly inside the copy.
    exact = _exhaustive(v[0], cols)
    assert (distance[found] >= exact[found] - 1e-3).all()
    copy = torch.zeros(rows, cols, dtype=torch.bool)
    copy[40:53, 40:53] = True
    copy = copy.flatten()
    assert torch.isclose(distance[copy], exact[copy], rtol=1e-4).float().mean() >= 0.8


def test_the_extractor_adds_the_near_copy_cells_before_the_forensic_ones(photo) -> None:
    plain = FeatureExtractor("efficientnet_lite0", device="cpu")
    with_near = FeatureExtractor("efficientnet_lite0", device="cpu", near_copies=True)
    assert with_near.cell_dim == plain.cell_dim + len(NEAR_COPY_CHANNELS)
    edited = jpeg(80)(_with_copy(photo, 24, 10, 80))
    cells = with_near.cells([edited])[0]
    forensic = len(FORENSIC_CHANNELS)
    near = cells[..., -forensic - len(NEAR_COPY_CHANNELS) : -forensic]
    expected = near_copy_cells(as_batch([edited]), with_near.grid(128, 128))[0]
    assert np.array_equal(near, expected.permute(1, 2, 0).numpy())
    assert np.array_equal(cells[..., : -forensic - 2], plain.cells([edited])[0][..., :-forensic])
    assert np.array_equal(cells[..., -forensic:], plain.cells([edited])[0][..., -forensic:])
    # A saved model's extractor computes the same cells.
    again = FeatureExtractor.from_info(with_near.info(), device="cpu")
    assert again.near_copies and again.cell_dim == with_near.cell_dim


def test_the_copy_rule_reads_near_copies_when_the_features_have_them(photo) -> None:
    """After JPEG (the copy off its 8 px grid) the exact copies are gone; the rule's channel
    still sees the copied patch."""
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu", near_copies=True)
    cells = extractor.cells([jpeg(80)(_with_copy(photo, 32, 10, 75))])[0].reshape(-1, 520)
    plain = FeatureExtractor("efficientnet_lite0", device="cpu")
    alone = copyrule.channel_weights(plain)  # without near-copies: the exact copies alone
    assert alone.sum() == 1 and alone[plain.cell_dim - len(FORENSIC_CHANNELS)] == 1
    exact = cells @ np.insert(alone, plain.cell_dim - len(FORENSIC_CHANNELS), [0, 0])
    both = cells @ copyrule.channel_weights(extractor)
    forensic = extractor.cell_dim - len(FORENSIC_CHANNELS)
    assert np.allclose(exact, cells[:, forensic + FORENSIC_CHANNELS.index("copies_mean")])
    near = cells[:, forensic - len(NEAR_COPY_CHANNELS)]
    assert np.allclose(both, exact + near)
    assert exact.mean() < 0.002 < both.mean()


def test_a_batch_too_large_for_one_sort_key_is_searched_in_groups_alike(
    photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images share a sorted list only while the image, bins, order and window fit in 63 bits
    (a few images of 2048 px); wider order bits force groups of 2 here, with the same marks."""
    from deepfake.features import near_copies

    batch = as_batch([jpeg(80)(_with_copy(photo, 24, 10, 80)), jpeg(85)(photo), photo])
    whole = near_copy_maps(batch)
    monkeypatch.setattr(near_copies, "_ORDER_BITS", 63 - 24 - 14 - 1)  # 14: 125 x 125 windows
    grouped = near_copy_maps(batch)
    assert whole[0].sum() > 0 and torch.equal(grouped, whole)
