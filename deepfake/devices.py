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
    a torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``). A CUDA device on a machine
    without one is ``Unavailable``, with a message saying so."""
    import torch

    from deepfake.section import Unavailable

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise Unavailable(f"device {name!r} is not a torch device ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise Unavailable(f"device {name!r}: no CUDA GPU is visible here (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise Unavailable(f"device {name!r}: this machine has {count} CUDA GPU(s)")
    return device
