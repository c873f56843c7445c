"""The detector stage's settings, ``svm.*``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from deepfake.section import Section


class SVMConfig(Section):
    """The detector: a linear SVM on cell features, its cells' decision values aggregated into
    the image's."""

    alpha: tuple[float, ...] = Field(
        (0.01, 0.03, 0.1, 0.3),
        min_length=1,
        description="L2 penalties of the linear SVM searched (larger = simpler model).",
    )
    top_k: tuple[int, ...] = Field(
        (1, 2, 4, 8, 16),
        min_length=1,
        description="Aggregations searched: an image's score is the mean of its k highest cell "
        "decision values (k = 1 is the maximum); chosen by grouped cross-validation.",
    )
    copy_rule: bool = Field(
        True,
        description="Beside the SVM, flag images made largely of exact copies of their own "
        "patches (exemplar fills, the clone stamp): a training-free rule, calibrated on real "
        "training images only.",
    )
    epochs: int = Field(
        8,
        ge=1,
        le=1000,
        description="Passes of averaged stochastic gradient descent over the cells (8: the "
        "figures of 15, in about half the time; bench/ablation.py).",
    )
    cv_folds: int = Field(3, ge=2, description="Grouped cross-validation folds (alpha and k).")
    seed: int = Field(0, description="Seed of the grouped folds and the SVM.")
    n_jobs: int = Field(-1, description="Parallel fits (-1 = all cores).")

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"n_jobs"})
