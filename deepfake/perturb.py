"""Everyday degradations: the robustness table's (applied to real and inpainted images alike), and
the random ones that training draws from (``augment``)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def apply(image: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB"))

    return apply


def downscale(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Shrink by ``factor`` (Lanczos), then back to the original size (bicubic), so that every
    detector input keeps one size; the detail lost in between stays lost."""

    def apply(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        small = Image.fromarray(image).resize(
            (max(1, round(width * factor)), max(1, round(height * factor))),
            Image.Resampling.LANCZOS,
        )
        return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))

    return apply


def blur(radius: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))

    return apply


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_95": jpeg(95),
    "jpeg_80": jpeg(80),
    "jpeg_60": jpeg(60),
    "downscale_0.75": downscale(0.75),
    "downscale_0.5": downscale(0.5),
    "gaussian_blur_1": blur(1.0),
}


AUGMENTATION = ("resize 0.5-1.0 (p 0.5), Gaussian blur sigma 0.3-1.2 (p 0.25), Gaussian noise "
                "sigma 1-4 (p 0.25), JPEG quality 50-100 (p 0.5), in that order")  # fmt: skip


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random everyday degradation of an RGB uint8 image, of the same size (the recipe of the
    aligned-dataset and B-Free detectors): downscaled by 0.5-1.0 and brought back half of the
    time, blurred a quarter of the time, noise added a quarter of the time, then saved as JPEG
    (quality 50-100) half of the time. The image keeps its size, so a mask keeps its place."""
    if rng.random() < 0.5:
        image = downscale(float(rng.uniform(0.5, 1.0)))(image)
    if rng.random() < 0.25:
        image = blur(float(rng.uniform(0.3, 1.2)))(image)
    if rng.random() < 0.25:
        noisy = image + rng.normal(0.0, rng.uniform(1.0, 4.0), image.shape)
        image = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        image = jpeg(int(rng.integers(50, 101)))(image)
    return np.ascontiguousarray(image)
