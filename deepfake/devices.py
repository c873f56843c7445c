"""One place that turns a device setting into a torch device (features, fine-tuning, inpainting).

torch is imported when a device is resolved, not when this module is, so that reading settings
never loads it.
"""

from __future__ import annotations

import ctypes
import os
import sys
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
        return torch.device("cuda" if cuda_visible() else "cpu")
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


def check_device(name: str) -> None:
    """``Unavailable`` when the device setting ``name`` cannot be used here (see
    ``resolve_device``). ``auto`` and ``cpu`` always can: those are checked without loading
    torch, which a run whose stages are all cached never needs."""
    if name not in ("auto", "cpu"):
        resolve_device(name)


def gpu_driver_present() -> bool:
    """Whether torch could find a GPU here, answered without importing torch: on Linux, False
    when neither the CUDA driver library loads nor the ROCm kernel driver is there (torch's
    ``cuda.is_available()`` needs one of them); True means only that it might."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return os.path.exists("/dev/kfd")
    return True


def cuda_visible() -> bool:
    """Whether torch sees a CUDA GPU; torch is loaded only where a GPU driver is there at all
    (most machines have none, and a run whose stages are all cached then loads no torch)."""
    if not gpu_driver_present():
        return False
    import torch

    return torch.cuda.is_available()
