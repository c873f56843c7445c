"""The inpainting backends: ``inpaint.backend`` is one of these names (or ``auto``), and each has
its own settings section ``inpaint.<name>``. Adding a backend is one module (an ``Inpainter`` with
its ``Config``) and one entry here."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from deepfake.inpaint.base import Inpainter
from deepfake.inpaint.classical import ClassicalInpainter
from deepfake.inpaint.sd2 import SD2Inpainter

if TYPE_CHECKING:
    from deepfake.inpaint.settings import InpaintConfig

log = logging.getLogger("deepfake")

BACKENDS: dict[str, type[Inpainter]] = {
    "classical": ClassicalInpainter,
    "sd2": SD2Inpainter,
}
# What ``auto`` tries, best first; the last one must always be available.
AUTO_ORDER = ("sd2", "classical")


def make_inpainter(cfg: InpaintConfig) -> Inpainter:
    """The configured backend (``auto`` resolved first) with its section's settings."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown inpainting backend {cfg.backend!r} (resolve 'auto' first)")
    backend = BACKENDS[cfg.backend]
    return backend(getattr(cfg, cfg.backend), max_batch=cfg.effective_batch_size)


def preflight_backend(cfg: InpaintConfig) -> None:
    """Raise ``Unavailable`` when the backend chosen explicitly cannot run here (``auto`` finds
    one that can when it plans, and says so)."""
    if cfg.backend != "auto":
        BACKENDS[cfg.backend].preflight(getattr(cfg, cfg.backend))


def resolve_backend(cfg: InpaintConfig) -> tuple[InpaintConfig, str]:
    """A concrete backend for ``auto`` (the first in ``AUTO_ORDER`` that can run here), and a
    note saying what was chosen and why; loudly, when it fell back."""
    if cfg.backend != "auto":
        return cfg, f"inpainting backend: {cfg.backend} (as configured)"
    preferred, reasons = AUTO_ORDER[0], []
    for name in AUTO_ORDER:
        reason = BACKENDS[name].unavailable(getattr(cfg, name))
        if reason is None:
            chosen = cfg.model_copy(update={"backend": name})
            if name == preferred:
                return chosen, f"inpainting backend: {name} (auto)"
            first = BACKENDS[preferred]
            note = (
                f"inpainting backend: {name} (auto fell back from {first.title}: {reasons[0]}). "
                f"The fakes are {BACKENDS[name].fakes} inpaintings, not {first.fakes} ones."
            )
            log.warning("!" * 12 + " %s", note)
            return chosen, note
        reasons.append(reason)
    raise RuntimeError(f"no inpainting backend can run here: {reasons}")
