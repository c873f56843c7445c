"""The inpainting stage's settings, ``inpaint.*``: what every backend shares, and each backend's
own section (``inpaint.<backend>.*``, from the registry)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from deepfake.inpaint.registry import AUTO_ORDER, BACKENDS
from deepfake.section import Section, refuse_moved, with_sections


class _InpaintSettings(Section):
    backend: Literal[("auto", *BACKENDS)] = Field(  # type: ignore[valid-type]
        "auto",
        description="Inpainting backend: "
        + ", ".join(f"{name} ({backend.title})" for name, backend in BACKENDS.items())
        + f", or auto (the first of {', '.join(AUTO_ORDER)} that can run here; a fallback is "
        "logged as a warning and written in the report).",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Images per inpainting batch (one subflow each); empty = the backend's "
        "default: "
        + ", ".join(f"{b.default_batch_size} for {n}" for n, b in BACKENDS.items())
        + ".",
    )
    seed: int = Field(0, description="Seed of the generator (per record: seed + record id).")
    deployment: str | None = Field(
        None,
        description="Send each batch to this Prefect deployment (flow/deployment, e.g. "
        "inpaint-batch/gpu) and wait for all; empty = run batches as local subflows.",
    )
    batch_attempts: int = Field(
        3, ge=1, description="With inpaint.deployment: runs of one batch before the stage fails."
    )
    batch_deadline: float = Field(
        6 * 3600.0,
        gt=0,
        description="With inpaint.deployment: seconds a batch run may take from its submission "
        "(waiting for a worker included) before it is cancelled and counts as a failed attempt.",
    )

    lost_after: int = Field(
        90,
        ge=45,
        description="With inpaint.deployment: seconds without a heartbeat (each batch run sends "
        "one every 30 s) after which the run's worker is taken for lost: the run is marked "
        "Crashed and the batch sent again.",
    )

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"batch_size", "deployment", "batch_attempts", "batch_deadline", "lost_after"}
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved("inpaint", data, MOVED)

    @property
    def effective_batch_size(self) -> int:
        """The batch size, or the default of the backend (for ``auto``: the one it tries
        first)."""
        if self.batch_size is not None:
            return self.batch_size
        return BACKENDS[
            self.backend if self.backend != "auto" else AUTO_ORDER[0]
        ].default_batch_size


InpaintConfig = with_sections(
    "InpaintConfig", _InpaintSettings, {n: b.Config for n, b in BACKENDS.items()}, "backend"
)
# Keys of the flat layout that came before the backend sections, and where they are now.
MOVED = {
    f"inpaint.{field}": f"inpaint.{name}.{field}"
    for name, backend in BACKENDS.items()
    for field in backend.Config.model_fields
}
