"""Classical CPU inpainting with OpenCV (Telea's fast marching method or Navier-Stokes)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from deepfake.inpaint.base import Inpainter

_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class ClassicalInpainter(Inpainter):
    name = "classical"

    def __init__(self, method: str = "telea", radius: int = 5) -> None:
        if method not in _METHODS:
            raise ValueError(f"unknown classical method {method!r}; choose from {list(_METHODS)}")
        self.method = method
        self.radius = radius

    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]
    ) -> list[np.ndarray]:
        out = []
        for image, mask in zip(images, masks, strict=True):
            if image.shape[:2] != mask.shape[:2]:
                raise ValueError(
                    f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size"
                )
            binary = np.where(mask > 127, 255, 0).astype(np.uint8)
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            filled = cv2.inpaint(bgr, binary, self.radius, _METHODS[self.method])
            out.append(cv2.cvtColor(filled, cv2.COLOR_BGR2RGB))
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "method": self.method, "radius": self.radius}
