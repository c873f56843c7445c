"""What a run needs, checked before any work: the storage, and whatever the chosen source,
inpainting backend and backbone say they lack (each through its registry's hook), so that a
command line refuses the run with one line instead of failing minutes in."""

from __future__ import annotations

from deepfake.config import Settings
from deepfake.devices import check_device
from deepfake.features.backbones import preflight_backbone
from deepfake.inpaint.registry import preflight_backend
from deepfake.sources.stage import preflight_source
from deepfake.storage import Storage


def preflight(settings: Settings) -> None:
    """Raise ``StorageError`` or ``Unavailable`` (a model, weights, credentials, a folder) with
    a message saying how to provide what is missing."""
    storage = Storage.open(settings.storage)
    storage.check()
    preflight_source(storage, settings.data)
    preflight_backend(settings.inpaint)
    preflight_backbone(settings.features.backbone)
    check_device(settings.features.device)
