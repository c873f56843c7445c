"""Masks: the shapes of the regions to inpaint (``shapes``: the registry of mask types), their
settings (``settings``: ``masks.*``) and the masks stage (``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MASK_TYPES": "shapes",
        "make_mask": "shapes",
        "MaskConfig": "settings",
        "STAGE": "stage",
        "make_masks": "stage",
    },
)
