"""Everyday degradations for the robustness table, applied to real and inpainted images alike."""

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
