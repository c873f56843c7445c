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


# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # the most glibc accepts (half its heap size)
_TRIM_THRESHOLD = 256 << 20
_kept = False


def keep_freed_memory() -> bool:
    """On glibc, let freed memory up to 256 MiB stay with the process, and serve blocks up to
    32 MiB from it, instead of handing them back to the kernel and mapping them afresh: CPU
    inference allocates and frees the same activations pass after pass (the classical fills the
    same arrays image after image), and every fresh mapping is zero-filled page by page on first
    touch. Lite0's backbone in passes of 16 images ran
    327-456 -> 447-544 images/s on a 2-core VM (README "Performance"); the cost is up to 256 MiB
    more resident memory. Left alone where the user set ``MALLOC_TRIM_THRESHOLD_`` or
    ``MALLOC_MMAP_THRESHOLD_`` (or preloads another allocator, which ignores mallopt); once per
    process; True when set."""
    global _kept
    if _kept or not sys.platform.startswith("linux"):
        return _kept
    if any(f"MALLOC_{name}_" in os.environ for name in ("TRIM_THRESHOLD", "MMAP_THRESHOLD")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent from musl and other C libraries
    except (OSError, AttributeError):
        return False
    _kept = bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _kept
