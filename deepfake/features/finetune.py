"""Transfer learning: fine-tune an ImageNet backbone to tell real from inpainted images.

A linear head is trained with the backbone, on the training split only, and thrown away
afterwards; the fine-tuned backbone's features feed the SVM. Two heads (``target``):

- ``image``: real or inpainted, from the extractor's image vector, with everyday degradations as
  augmentation (JPEG, Gaussian blur, horizontal flip);
- ``cells``: each cell inpainted or clean, from the backbone's part of the cell's features (what
  the detector itself learns), the labels following the mask, with the features stage's
  degradations (resize, blur, noise, JPEG; ``deepfake.perturb.augment``) and flips.

Batch-norm statistics stay frozen: the batches are small and the ImageNet statistics are a better
estimate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfake.features.stage import mask_coverage
from deepfake.perturb import augment as degrade
from deepfake.perturb import blur, jpeg
from deepfake.progress import Progress, prefetch

if TYPE_CHECKING:
    from deepfake.features.extractor import FeatureExtractor

log = logging.getLogger("deepfake")

# (indices) -> (the indices that could be read, their images, their masks: None for a real
# image, or where the head does not read them)
Loader = Callable[[list[int]], tuple[list[int], list[np.ndarray], list[np.ndarray | None]]]

TARGETS = ("image", "cells")
AUGMENTATION = {
    "image": "JPEG q60-95 (p 0.5), Gaussian blur r0.3-1.5 (p 0.3), horizontal flip (p 0.5)",
    "cells": "the features stage's degradations, then a horizontal flip (p 0.5) of image and mask",
}


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random everyday degradation: JPEG (quality 60-95) half of the time, Gaussian blur
    (radius 0.3-1.5) a third of the time, a horizontal flip half of the time."""
    if rng.random() < 0.5:
        image = jpeg(int(rng.integers(60, 96)))(image)
    if rng.random() < 0.3:
        image = blur(float(rng.uniform(0.3, 1.5)))(image)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def augment_cells(
    image: np.ndarray, mask: np.ndarray | None, fake: bool, grid: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A degraded copy of the image and each cell's share inpainted, (rows, columns). Without a
    ``mask`` every cell of a real image is clean and every cell of a fake inpainted (a
    whole-image reconstruction), as the features stage labels them. The degradations keep the
    image's geometry, so the mask keeps its place; a flip flips both."""
    image = degrade(image, rng)
    coverage = mask_coverage(mask, grid, fake)
    if rng.random() < 0.5:
        image, coverage = image[:, ::-1], coverage[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(coverage)


def cell_loss(logits: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each cell (inpainted: at least half covered), inpainted and clean
    cells weighing half each, whatever their numbers; cells under a mask's edge (covered less
    than half) are left out: their features mix both."""
    target = (coverage >= 0.5).float()
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    inside, clean = coverage >= 0.5, coverage == 0
    parts = [losses[cells].mean() for cells in (inside, clean) if cells.any()]
    return torch.stack(parts).mean()


def _freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def finetune(
    extractor: FeatureExtractor,
    load: Loader,
    labels: np.ndarray,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    target: str = "image",
) -> list[float]:
    """Fine-tune ``extractor.model`` in place on images ``load(indices)`` with ``labels``
    (1 = inpainted), a head of ``target`` (see the module); returns the mean training loss of
    each epoch. The cell head reads the masks ``load`` gives."""
    if target not in TARGETS:
        raise ValueError(f"fine-tuning target must be one of {TARGETS}, got {target!r}")
    n_fake, n_real = int((labels == 1).sum()), int((labels == 0).sum())
    if not n_fake or not n_real:
        raise ValueError("fine-tuning needs real and inpainted images in the training split")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, device = extractor.model, extractor.device
    head = (nn.Linear(extractor.dim, 1) if target == "image"
            else nn.Conv2d(extractor.dim, 1, kernel_size=1)).to(device)  # fmt: skip
    optimiser = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": lr}, {"params": head.parameters(), "lr": lr * 10}],
        weight_decay=1e-4,
    )
    # Each source has one real image and several inpaintings: weigh the classes evenly.
    pos_weight = torch.tensor(n_real / n_fake, device=device)
    # float16 gradients underflow without loss scaling; bfloat16 and float32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=extractor.precision == "float16")
    losses = []
    steps = -(-len(labels) // batch_size)
    progress = Progress("fine-tuning", epochs * steps, unit="batches", log=False)
    for epoch in range(epochs):
        start = time.monotonic()
        model.train()
        _freeze_batchnorm(model)
        order = rng.permutation(len(labels))
        batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        total, seen = 0.0, 0
        for kept, images, masks in prefetch(batches, load):  # the next batch is read meanwhile
            if not kept:
                progress.advance()
                continue
            if target == "image":
                x = extractor.preprocess([augment(image, rng) for image in images])
                y = torch.as_tensor(labels[kept], dtype=torch.float32, device=device)
                logits = head(extractor.embed(x)).squeeze(1)
                loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            else:
                grid = extractor.grid(*images[0].shape[:2])
                fakes = labels[kept] == 1
                pairs = [
                    augment_cells(image, mask, fake, grid, rng)
                    for image, mask, fake in zip(images, masks, fakes, strict=True)
                ]
                x = extractor.preprocess([image for image, _ in pairs])
                coverage = torch.from_numpy(np.stack([c for _, c in pairs])).to(device)
                loss = cell_loss(head(extractor.embed_cells(x, grid)).squeeze(1).float(), coverage)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            total += loss.item() * len(kept)
            seen += len(kept)
            progress.advance()
        losses.append(total / max(seen, 1))
        seconds = time.monotonic() - start
        log.info(
            "fine-tuning: epoch %d/%d, loss %.4f, %d images in %.1f s (%.1f images/s)",
            epoch + 1, epochs, losses[-1], seen, seconds, seen / max(seconds, 1e-9),
        )  # fmt: skip
    model.eval()
    extractor.trained()
    return losses
