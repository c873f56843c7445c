"""What an editor does after a fill, so that it does not show: the fill feathered or
Poisson-blended into its surroundings, noise matched to the rest of the image, or the whole
edited image resized or saved as JPEG afterwards.

Each function takes the original RGB uint8 image, the filled one, the mask (uint8, 255 = filled)
and a seeded generator, and returns the edited image (same size). The first three change the
filled region (and, when feathering, a few pixels around it); the last two change every pixel,
as saving an edited picture does.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from deepfake.perturb import downscale, jpeg

PostProcess = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def feather(
    original: np.ndarray, filled: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Alpha-blend the fill into the original across a soft edge (Gaussian, sigma 1.5-4 px)."""
    alpha = cv2.GaussianBlur((mask > 127).astype(np.float32), (0, 0), rng.uniform(1.5, 4.0))
    out = alpha[..., None] * filled + (1 - alpha[..., None]) * original
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def poisson(
    original: np.ndarray, filled: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Poisson (gradient-domain) blending of the filled region into the original: its colours
    follow the surroundings at the edge (OpenCV's seamless cloning)."""
    hole = mask > 127
    pad = 4  # seamless cloning needs the region away from the border
    src = cv2.copyMakeBorder(filled, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    dst = cv2.copyMakeBorder(original, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    region = cv2.copyMakeBorder(np.where(hole, 255, 0).astype(np.uint8), pad, pad, pad, pad,
                                cv2.BORDER_CONSTANT, value=0)  # fmt: skip
    x, y, w, h = cv2.boundingRect(region)
    # OpenCV places the region's box at centre - size / 2: an odd box sits exactly.
    blended = cv2.seamlessClone(src, dst, region, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    blended = blended[pad:-pad, pad:-pad]
    return np.where(hole[..., None], blended, original).astype(np.uint8)


def _noise_sigma(image: np.ndarray, where: np.ndarray) -> float:
    """Noise level of ``image`` over ``where``: the median absolute deviation of its fine
    residual (image minus a 3x3 median), scaled to a Gaussian sigma."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    residual = gray - cv2.medianBlur(gray.astype(np.uint8), 3).astype(np.float32)
    values = residual[where]
    if values.size < 16:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def match_noise(
    original: np.ndarray, filled: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Add Gaussian noise to the filled region so that its noise level matches the rest."""
    hole = mask > 127
    want = _noise_sigma(original, ~hole)
    have = _noise_sigma(filled, hole)
    sigma = float(np.sqrt(max(want**2 - have**2, 0.0)))
    if sigma == 0.0:
        return filled.copy()
    noise = rng.normal(0.0, sigma, filled.shape)
    out = np.where(hole[..., None], filled + noise, filled)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resize_after(
    original: np.ndarray, filled: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The whole edited image shrunk (by 0.5-0.9) and brought back to its size."""
    return downscale(float(rng.uniform(0.5, 0.9)))(filled)


def jpeg_after(
    original: np.ndarray, filled: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The whole edited image saved as JPEG (quality 70-95) and decoded."""
    return jpeg(int(rng.integers(70, 96)))(filled)


POSTPROCESS: dict[str, PostProcess] = {
    "feather": feather,
    "poisson": poisson,
    "noise": match_noise,
    "resize": resize_after,
    "jpeg": jpeg_after,
}
