"""The small interface every inpainting backend implements.

A backend's own settings section (``Config``, shown as ``inpaint.<backend>.*``) is a ``Section``:
every field names its outputs, except the ``EXECUTION_ONLY`` ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from deepfake.section import Section, Unavailable

if TYPE_CHECKING:
    import pandas as pd

    from deepfake.storage import Storage


class Inpainter(ABC):
    """Fills the white regions of masks.

    ``inpaint`` takes a batch: RGB uint8 arrays (HxWx3), masks (uint8 HxW, 255 = fill) of the same
    size, and one seed per image; it returns RGB uint8 arrays of the input sizes, in input order.
    A backend must give the same output for the same image, mask and seed, whatever the batch.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type[Section]] = Section
    # What the backend is called in reports, and what its fakes are called.
    title: ClassVar[str] = "base"
    fakes: ClassVar[str] = "base"
    default_batch_size: ClassVar[int] = 8
    # A deterministic backend ignores seeds: then they do not name its outputs.
    uses_seed: ClassVar[bool] = True
    # True when outputs are resampled (e.g. to a model resolution and back): real images must
    # then go through ``real_counterpart`` so both classes share one resampling history.
    resamples: bool = False
    # True when the backend also makes whole-image reconstructions of real images as fakes.
    reconstructs: bool = False
    # Distributions whose versions shape the outputs (their versions name the stage's folder).
    packages: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unavailable(cls, cfg: Section) -> str | None:
        """Why this backend cannot run here as configured, or None when it can (what ``auto``
        asks before choosing it)."""
        return None

    @classmethod
    def revision(cls, cfg: Section) -> str | None:
        """What names the model the backend fills with, when settings do not (the weights'
        revision, say); None when there is nothing more to name."""
        return None

    @classmethod
    def preflight(cls, cfg: Section) -> None:
        """Raise ``Unavailable``, saying how to provide what is missing, when this backend was
        chosen explicitly and cannot run here as configured; called before any work."""
        reason = cls.unavailable(cfg)
        if reason is not None:
            raise Unavailable(f"inpaint.backend={cls.name} cannot run here: {reason}")

    @abstractmethod
    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]
    ) -> list[np.ndarray]: ...

    def method(self, seed: int) -> str:
        """The inpainting method a record with this seed gets (a backend may mix several)."""
        return self.name

    def family(self, method: str) -> str:
        """The family of fill a method belongs to (what leave-one-family-out holds out)."""
        return method.split()[0]

    def prepare(self, storage: Storage, folder: str, sources: pd.DataFrame) -> None:
        """Work every batch needs done once, before any of them (training what the backend
        fills with, say), kept under the stage's ``folder``; ``sources`` is the sources'
        manifest. Called when the stage is planned. Nothing, by default."""
        return None

    def load(self, storage: Storage, folder: str) -> None:
        """Load what ``prepare`` kept, in the process that runs a batch. Nothing, by default."""
        return None

    def variants_of(
        self, original: np.ndarray, mask: np.ndarray, output: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The records one inpainting makes, by variant name ("" = the record itself)."""
        return {"": output}

    def reconstruct(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Whole-image reconstructions of real images (only when ``reconstructs``)."""
        raise NotImplementedError(f"the {self.name} backend makes no reconstructions")

    def real_counterpart(self, image: np.ndarray) -> np.ndarray:
        """The real image as the detector should see it beside this backend's outputs."""
        return image

    def describe(self) -> dict[str, Any]:
        """Settings that shaped the output, for manifests and reports."""
        return {"backend": self.name}
