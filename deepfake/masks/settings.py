"""The masks stage's settings, ``masks.*``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deepfake.masks.shapes import MASK_TYPES
from deepfake.section import Section


class MaskConfig(Section):
    types: tuple[Literal[tuple(MASK_TYPES)], ...] = Field(  # type: ignore[valid-type]
        tuple(MASK_TYPES),
        min_length=1,
        description="Mask types made for every source: the original project's five "
        "(diagonal halves, random rectangles: 40-60 % of the image) and the edits users meet "
        "(ellipse, blob, brush, freeform: 2-30 %).",
    )
    seed: int = Field(0, description="Seed of the random masks (per source and mask type).")
