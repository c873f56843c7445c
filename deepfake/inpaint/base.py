"""The small interface every inpainting backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Inpainter(ABC):
    """Fills the white regions of masks.

    ``inpaint`` takes a batch: RGB uint8 arrays (HxWx3), masks (uint8 HxW, 255 = fill) of the same
    size, and one seed per image; it returns RGB uint8 arrays of the input sizes, in input order.
    A backend must give the same output for the same image, mask and seed, whatever the batch.
    """

    name: str = "base"
    # True when outputs are resampled (e.g. to a model resolution and back): real images must
    # then go through ``real_counterpart`` so both classes share one resampling history.
    resamples: bool = False

    @abstractmethod
    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]
    ) -> list[np.ndarray]: ...

    def real_counterpart(self, image: np.ndarray) -> np.ndarray:
        """The real image as the detector should see it beside this backend's outputs."""
        return image

    def describe(self) -> dict[str, Any]:
        """Settings that shaped the output, for manifests and reports."""
        return {"backend": self.name}
