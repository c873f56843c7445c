"""CPU inpainting from every family of fill, and the edits that hide a fill afterwards:

- ``pde``: diffusion by partial differential equations (OpenCV's Telea and Navier-Stokes,
  scikit-image's biharmonic);
- ``patch``: exemplar-based patch copying (Criminisi's method) and patch voting (Wexler et al.,
  the PatchMatch family of content-aware fill), which blends overlapping patches;
- ``learned``: a small convolutional fill network trained on the sources (``fillnet``);
- ``postprocessed``: a fill of any family, then feathered or Poisson-blended into its
  surroundings, its noise matched to the rest, or the whole image resized or saved as JPEG
  (``postprocess``).

Each record's family is drawn from its seed (the families share the records evenly), then its
method within the family (and, for a post-processed edit, the fill and the edit): the same
record always gets the same fill.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from deepfake.devices import keep_freed_memory
from deepfake.images import decode_read
from deepfake.inpaint import fillnet
from deepfake.inpaint.base import Inpainter
from deepfake.inpaint.exemplar import exemplar_fill
from deepfake.inpaint.patchvote import patch_vote_fill
from deepfake.inpaint.postprocess import POSTPROCESS
from deepfake.section import Section

if TYPE_CHECKING:
    import pandas as pd

    from deepfake.storage import Storage

Method = Literal["telea", "ns", "biharmonic", "exemplar", "patchvote", "learned"]
PostProcess = Literal["feather", "poisson", "noise", "resize", "jpeg"]
# The family of every fill method: what leave-one-family-out leaves out together.
FAMILY = {
    "telea": "pde",
    "ns": "pde",
    "biharmonic": "pde",
    "exemplar": "patch",
    "patchvote": "patch",
    "learned": "learned",
}
POSTPROCESSED = "postprocessed"


class ClassicalConfig(Section):
    methods: tuple[Method, ...] = Field(
        ("telea", "ns", "biharmonic", "exemplar", "patchvote", "learned"),
        min_length=1,
        description="Fill methods, mixed over the records: telea, ns, biharmonic (diffusion: "
        "family pde), exemplar (patch copying), patchvote (patch voting; family patch), learned "
        "(a small fill network trained on the sources).",
    )
    postprocess: tuple[PostProcess, ...] = Field(
        ("feather", "poisson", "noise", "resize", "jpeg"),
        description="Edits after a fill, making up the postprocessed family (as many records as "
        "any other family): feather, poisson (blend the fill into its surroundings), noise "
        "(match the rest's noise), resize, jpeg (the whole image, after the edit); empty = none.",
    )
    fill_steps: int = Field(
        fillnet.STEPS,
        ge=1,
        le=100_000,
        description="learned: most training steps of the fill network; it takes one step (12 "
        "crops) per source up to this (about 0.1 s a step on two CPU cores).",
    )
    radius: int = Field(5, ge=1, le=64, description="telea and ns: inpainting radius (pixels).")
    patch: int = Field(9, ge=3, le=31, description="exemplar: patch side (pixels, odd).")

    @field_validator("methods", "postprocess")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"listed twice in {list(value)}")
        return value

    @field_validator("patch")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"patch {value} is not odd")
        return value


@contextmanager
def one_thread_per_task() -> Iterator[None]:
    """BLAS (patch voting's matrix products) and torch (the learned fill) on one thread each
    while the pool's threads use every core: threads of their own on top of the pool's fight
    over the same cores (the offline default's inpainting: 53 -> 47 s on 2 cores). It also makes a
    fill's arithmetic independent of the machine's core count."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # only where a fill uses it (imported already)
    before = torch.get_num_threads() if torch else 0
    with threadpool_limits(limits=1):
        if torch:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(before)


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
    packages: ClassVar[tuple[str, ...]] = (
        "opencv-python-headless|opencv-python", "scikit-image", "numpy", "torch", "pillow",
    )  # fmt: skip

    def __init__(self, cfg: ClassicalConfig | None = None, max_batch: int | None = None) -> None:
        self.cfg = cfg or ClassicalConfig()
        self._net: fillnet.FillNet | None = None
        # The fills and the fill network's training allocate and free the same arrays image
        # after image: the offline default's inpainting 43.7 -> 42.0 s (four pairs, 2 cores).
        keep_freed_memory()

    def families(self) -> list[str]:
        """The families the records are drawn from, in a fixed order."""
        own = sorted({FAMILY[m] for m in self.cfg.methods})
        return own + ([POSTPROCESSED] if self.cfg.postprocess else [])

    def method(self, seed: int) -> str:
        """``fill`` or ``fill+edit``: the family first (evenly), then the method in it."""
        rng = np.random.default_rng(seed)
        families = self.families()
        family = families[int(rng.integers(len(families)))]
        if family == POSTPROCESSED:
            fill = self.cfg.methods[int(rng.integers(len(self.cfg.methods)))]
            edit = self.cfg.postprocess[int(rng.integers(len(self.cfg.postprocess)))]
            return f"{fill}+{edit}"
        members = [m for m in self.cfg.methods if FAMILY[m] == family]
        return members[int(rng.integers(len(members)))]

    def family(self, method: str) -> str:
        return POSTPROCESSED if "+" in method else FAMILY[method]

    def prepare(self, storage: Storage, folder: str, sources: pd.DataFrame) -> None:
        """Train the fill network on the sources (once: a rerun finds it in ``folder``)."""
        if "learned" not in self.cfg.methods:
            return
        if not storage.exists(f"{folder}/{fillnet.WEIGHTS}"):
            from safetensors.torch import save

            uris = list(sources["uri"])
            images = [decode_read(data, uri)
                      for uri, data in zip(uris, storage.read_many(uris), strict=True)]  # fmt: skip
            steps = min(self.cfg.fill_steps, len(images))
            weights = fillnet.train(images, fillnet.training_seed(0), steps)
            storage.write_bytes(f"{folder}/{fillnet.WEIGHTS}", save(weights))
        self.load(storage, folder)

    def load(self, storage: Storage, folder: str) -> None:
        """The fill network that ``prepare`` trained, when the methods use it."""
        if "learned" in self.cfg.methods and self._net is None:
            from safetensors.torch import load

            self._net = fillnet.FillNet(load(storage.read_bytes(f"{folder}/{fillnet.WEIGHTS}")))

    def _base(self, image: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
        if method == "telea":
            return _opencv(image, mask, self.cfg.radius, cv2.INPAINT_TELEA)
        if method == "ns":
            return _opencv(image, mask, self.cfg.radius, cv2.INPAINT_NS)
        if method == "biharmonic":
            return _biharmonic(image, mask)
        if method == "exemplar":
            return exemplar_fill(image, mask, patch=self.cfg.patch)
        if method == "patchvote":
            return patch_vote_fill(image, mask)
        if self._net is None:
            raise RuntimeError("the learned fill needs its network: call prepare() or load()")
        return self._net.fill(image, mask)

    def fill(self, image: np.ndarray, mask: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        binary = np.where(mask > 127, 255, 0).astype(np.uint8)
        fill, _, edit = method.partition("+")
        filled = self._base(image, binary, fill)
        if not edit:
            return filled
        rng = np.random.default_rng([seed, 1])  # the edit's own stream, apart from the choice
        return POSTPROCESS[edit](image, filled, binary, rng)

    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]
    ) -> list[np.ndarray]:
        """Every image filled by its record's method, on all cores (OpenCV and numpy release the
        interpreter lock while they work; each fill is independent, so the order of work
        changes nothing)."""
        methods = [self.method(seed) for seed in seeds]
        with one_thread_per_task(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return list(pool.map(self.fill, images, masks, methods, seeds))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, **self.cfg.model_dump(mode="json")}
