"""The detector stage's settings, ``svm.*``, and which held-out detectors it trains beside the
main one (``HeldOut``, from the evaluation's and the split's settings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from deepfake.section import Section

if TYPE_CHECKING:  # the settings hold this module's section
    from deepfake.config import Settings


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


class HeldOut(BaseModel):
    """The held-out detectors trained beside the main one (see ``heldout``): ``repeats`` grouped
    splits of ``test_size`` from ``seed`` on, each with a detector per left-out family of fill
    and, if asked, per left-out method."""

    model_config = ConfigDict(frozen=True)

    repeats: int = 1
    test_size: float = 0.25
    seed: int = 0
    leave_one_family_out: bool = False
    leave_one_method_out: bool = False

    @classmethod
    def of(cls, settings: Settings) -> HeldOut:
        """The held-out detectors the evaluation settings ask for, on the split's settings."""
        return cls(
            repeats=settings.evaluate.repeats,
            test_size=settings.split.test_size,
            seed=settings.split.seed,
            leave_one_family_out=settings.evaluate.leave_one_family_out,
            leave_one_method_out=settings.evaluate.leave_one_method_out,
        )

    def leave_out(self) -> tuple[str, ...]:
        """The columns whose values are left out in turn."""
        return tuple(c for c, on in (("family", self.leave_one_family_out),
                                     ("method", self.leave_one_method_out)) if on)  # fmt: skip
