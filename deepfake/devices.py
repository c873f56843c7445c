"""One place that turns a device setting into a torch device (features, fine-tuning, inpainting).

torch is imported when a device is resolved, not when this module is, so that reading settings
never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA GPU when there is one, else the CPU; anything else is taken as
    a torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
