"""The fine-tuning heads' targets: what a cell head is taught, and how its loss weighs cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepfake.features.extractor import FeatureExtractor
from deepfake.features.finetune import augment_cells, cell_loss, finetune


def _masked(side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[:, : side // 4] = 255  # the left quarter inpainted
    return image, mask


def test_cell_labels_follow_the_mask_through_flips() -> None:
    image, mask = _masked()
    flips = set()
    for seed in range(8):
        degraded, coverage = augment_cells(image, mask, True, (8, 8), np.random.default_rng(seed))
        assert degraded.shape == image.shape and coverage.shape == (8, 8)
        flipped = coverage[0, -1] == 1
        flips.add(bool(flipped))
        want = np.zeros((8, 8), np.float32)
        want[:, -2:] = 1 if flipped else 0
        want[:, :2] = 0 if flipped else 1
        assert np.array_equal(coverage, want)
    assert flips == {True, False}  # both sides drawn
    _, real = augment_cells(image, None, False, (8, 8), np.random.default_rng(0))
    assert not real.any()
    _, whole = augment_cells(image, None, True, (8, 8), np.random.default_rng(0))
    assert whole.all()  # a fake without a mask: a whole-image reconstruction


def test_cell_loss_weighs_inpainted_and_clean_cells_alike_and_skips_edges() -> None:
    coverage = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.3]])
    logits = torch.tensor([[0.0, 5.0, 5.0, 5.0, 9.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    inside = bce(torch.tensor(0.0), torch.tensor(1.0))
    clean = bce(torch.tensor(5.0), torch.tensor(0.0))
    # One inpainted cell counts as much as three clean ones; the edge cell (0.3) not at all.
    assert torch.isclose(cell_loss(logits, coverage), (inside + clean) / 2)
    assert torch.isclose(cell_loss(logits[:, 1:4], coverage[:, 1:4]), clean)  # a real image


def test_cell_head_learns_where_the_mask_is() -> None:
    """Steps on one image whose masked quarter is flat grey (and its real twin): the loss falls
    (each step draws other degradations, so the epochs' losses are compared three by three)."""
    image, mask = _masked()
    image[:, :16] = 128
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu")
    images, masks = [image, image.copy()], [mask, None]

    def load(kept: list[int]) -> tuple[list[int], list[np.ndarray], list[np.ndarray | None]]:
        return kept, [images[i] for i in kept], [masks[i] for i in kept]

    losses = finetune(extractor, load, np.array([1, 0]), epochs=10, lr=1e-4, batch_size=2,
                      seed=0, target="cells")  # fmt: skip
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_unknown_target_is_refused() -> None:
    extractor = FeatureExtractor("efficientnet_lite0", device="cpu")
    with pytest.raises(ValueError, match="target"):
        finetune(extractor, lambda kept: (kept, [], []), np.array([0, 1]), epochs=1, lr=1e-4,
                 batch_size=2, seed=0, target="pixels")  # fmt: skip
