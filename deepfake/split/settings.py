"""The split stage's settings, ``split.*``."""

from __future__ import annotations

from pydantic import Field

from deepfake.section import Section


class SplitConfig(Section):
    test_size: float = Field(
        0.25, gt=0, lt=1, description="Share of source groups held out for testing."
    )
    seed: int = Field(0, description="Seed of the grouped train/test split.")
