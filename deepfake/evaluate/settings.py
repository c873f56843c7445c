"""The evaluation stage's settings, ``evaluate.*``."""

from __future__ import annotations

from pydantic import Field

from deepfake.section import Section


class EvalConfig(Section):
    bootstrap: int = Field(
        1000, ge=0, description="Bootstrap resamples (by source group) for confidence intervals."
    )
    robustness: bool = Field(
        True, description="Score the test split again after JPEG, downscaling and blur."
    )
    shortcut_audit: bool = Field(
        True, description="Check how well metadata alone (size, format, mean) separates classes."
    )
    compare_frozen: bool = Field(
        True,
        description="With features.finetune_epochs > 0, also train a detector on frozen features "
        "and compare the two in the report.",
    )
    leave_one_family_out: bool = Field(
        True,
        description="For every family of fill (pde, patch, learned, postprocessed): a detector "
        "trained on the others, tested on it (real test images against that family's): what "
        "predicts how the detector does on fills it has never seen.",
    )
    leave_one_method_out: bool = Field(
        False,
        description="The same for every single inpainting method (many more detectors to train).",
    )
    repeats: int = Field(
        3,
        ge=1,
        description="Grouped train/test splits (split.seed, split.seed + 1, ...) over which the "
        "headline figures and the left-out families are reported as mean and std.",
    )
    examples: int = Field(
        6, ge=0, description="Test images shown with their true mask and heat map."
    )
    seed: int = Field(0, description="Seed of the bootstrap.")
