"""The features stage's settings, ``features.*``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from deepfake.features.backbones import BACKBONES, DEFAULT_BACKBONE
from deepfake.section import Section


class FeaturesConfig(Section):
    backbone: Literal[tuple(BACKBONES)] = Field(  # type: ignore[valid-type]
        DEFAULT_BACKBONE, description="CNN backbone (an ImageNet model of the registry)."
    )
    input_size: int | None = Field(
        None,
        ge=32,
        description="Resize images to this side before the CNN; empty = native resolution "
        "(forensic traces of inpainting fade when an image is resampled).",
    )
    cell: int = Field(
        8,
        ge=4,
        le=64,
        description="Side of a cell (pixels of the CNN's input): the detector scores every cell, "
        "so an edit of a few cells is seen; the heat maps have this resolution.",
    )
    cells_per_image: int = Field(
        24,
        ge=2,
        description="Training cells kept per image: half inside the inpainted region when there "
        "is one, half clean.",
    )
    augment: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of images whose training cells come from a degraded copy (resize "
        "0.5-1.0, blur, noise, JPEG 50-100, drawn per image; real and inpainted alike), so that "
        "the detector cannot lean on traces that everyday processing removes.",
    )
    relative_stages: int = Field(
        0,
        ge=0,
        description="Also give each cell the first this many backbone stages' features minus "
        "the image's median cell (the fine texture against the image's own: edits change it "
        "locally, JPEG and resizing everywhere); 0 = none.",
    )
    near_copies: bool = Field(
        False,
        description="Also give each cell its share of near-copy windows (a 4x4 window whose "
        "nearest window elsewhere is within JPEG-like noise and whose neighbours' nearest lie at "
        "the same offset: patches copied and then compressed or resized), which the copy rule "
        "then counts with exact copies; about 20 ms an image of 128 px on a 2-core CPU.",
    )
    finetune_epochs: int = Field(
        0,
        ge=0,
        description="Fine-tune the backbone for this many epochs on the training split only "
        "(JPEG/blur/flip augmentation) before extracting features; 0 = frozen ImageNet weights.",
    )
    finetune_target: Literal["image", "cells"] = Field(
        "image",
        description="What fine-tuning teaches: image = real or inpainted, from the image's "
        "pooled vector; cells = each cell inpainted or clean, following the mask (what the "
        "detector learns), with the degradations of features.augment.",
    )
    finetune_lr: float = Field(1e-4, gt=0, description="Fine-tuning learning rate (backbone).")
    finetune_batch_size: int = Field(32, ge=2, description="Images per fine-tuning step.")
    seed: int = Field(
        0, description="Seed of the training cells drawn, their degradations and fine-tuning."
    )
    precision: Literal["float32", "auto", "bfloat16", "float16"] = Field(
        "float32",
        description="Compute precision of the backbone (autocast); auto = bfloat16 where the "
        "device computes it natively (recent GPUs, CPUs with AVX512-BF16/AMX), else float32. "
        "Faster, but the vectors differ slightly from float32 ones.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Images per batch read, extracted and written (one part file each); a CPU "
        "runs a batch through the backbone in passes of at most 16 images of 128 px (fewer "
        "when larger), a GPU whole.",
    )
    device: str = Field(
        "auto", description="torch device for feature extraction (auto = cuda if any)."
    )

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})

    def frozen(self) -> FeaturesConfig:
        """The same features without fine-tuning (the baseline a fine-tuned run is compared to)."""
        return self.model_copy(update={"finetune_epochs": 0})
