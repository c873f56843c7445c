"""Classical CPU inpainting with OpenCV (Telea's fast marching method or Navier-Stokes)."""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from deepfake.inpaint.base import BackendConfig, Inpainter

_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class ClassicalConfig(BackendConfig):
    method: Literal["telea", "ns"] = Field(
        "telea", description="OpenCV's method: Telea (fast marching) or Navier-Stokes."
    )
    radius: int = Field(5, ge=1, le=64, description="Inpainting radius (pixels).")


class ClassicalInpainter(Inpainter):
    name = "classical"
    Config = ClassicalConfig
    title = "OpenCV"
    fakes = "OpenCV"
    default_batch_size = 256
    uses_seed = False

    def __init__(self, cfg: ClassicalConfig | None = None, max_batch: int | None = None) -> None:
        self.cfg = cfg or ClassicalConfig()
        self.method, self.radius = self.cfg.method, self.cfg.radius

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
