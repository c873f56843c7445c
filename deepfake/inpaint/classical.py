"""Classical CPU inpainting, from every family of fill: diffusion by partial differential equations
(OpenCV's Telea and Navier-Stokes, scikit-image's biharmonic) and exemplar-based patch copying
(Criminisi's method, the classic content-aware fill).

``methods`` mixes them: each record's method is chosen from its seed, so the same record always
gets the same method, and the methods share the records evenly.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from deepfake.inpaint.base import Inpainter
from deepfake.inpaint.exemplar import exemplar_fill
from deepfake.section import Section

Method = Literal["telea", "ns", "biharmonic", "exemplar"]


class ClassicalConfig(Section):
    methods: tuple[Method, ...] = Field(
        ("telea", "ns", "biharmonic", "exemplar"),
        min_length=1,
        description="Inpainting methods, mixed over the records (each record gets one): telea, "
        "ns (OpenCV diffusion), biharmonic (scikit-image), exemplar (patch copying).",
    )
    radius: int = Field(5, ge=1, le=64, description="telea and ns: inpainting radius (pixels).")
    patch: int = Field(9, ge=3, le=31, description="exemplar: patch side (pixels, odd).")

    @field_validator("methods")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"methods listed twice in {list(value)}")
        return value

    @field_validator("patch")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"patch {value} is not odd")
        return value


def _opencv(image: np.ndarray, mask: np.ndarray, radius: int, flag: int) -> np.ndarray:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.inpaint(bgr, mask, radius, flag), cv2.COLOR_BGR2RGB)


def _biharmonic(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    hole = mask > 127
    filled = inpaint_biharmonic(image / 255.0, hole, channel_axis=-1)
    out = image.copy()
    out[hole] = np.clip(filled[hole] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


class ClassicalInpainter(Inpainter):
    name = "classical"
    Config = ClassicalConfig
    title = "OpenCV"
    fakes = "classical"
    default_batch_size = 256
    # The method of each record is chosen from its seed (the fills themselves are deterministic).
    uses_seed: ClassVar[bool] = True

    def __init__(self, cfg: ClassicalConfig | None = None, max_batch: int | None = None) -> None:
        self.cfg = cfg or ClassicalConfig()

    def method(self, seed: int) -> str:
        return self.cfg.methods[seed % len(self.cfg.methods)]

    def fill(self, image: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        binary = np.where(mask > 127, 255, 0).astype(np.uint8)
        if method == "telea":
            return _opencv(image, binary, self.cfg.radius, cv2.INPAINT_TELEA)
        if method == "ns":
            return _opencv(image, binary, self.cfg.radius, cv2.INPAINT_NS)
        if method == "biharmonic":
            return _biharmonic(image, binary)
        return exemplar_fill(image, binary, patch=self.cfg.patch)

    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]
    ) -> list[np.ndarray]:
        """Every image filled by its record's method, on all cores (OpenCV releases the
        interpreter lock while it works; each fill is independent, so the order of work changes
        nothing)."""
        methods = [self.method(seed) for seed in seeds]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return list(pool.map(self.fill, images, masks, methods))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, **self.cfg.model_dump(mode="json")}
