"""Inpainting: the backends behind one small interface (``registry``: classical, sd2; ``base``),
their settings (``settings``: ``inpaint.*``) and the stage that runs them in resumable batches
(``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BACKENDS": "registry",
        "make_inpainter": "registry",
        "resolve_backend": "registry",
        "preflight_backend": "registry",
        "Inpainter": "base",
        "InpaintConfig": "settings",
        "BackendUnavailable": "sd2",
        "ModelUnavailable": "sd2",
        "STAGE": "stage",
        "InpaintPlan": "stage",
        "plan": "stage",
        "run_batch": "stage",
        "run_planned_batch": "stage",
        "collect": "stage",
        "backend_note": "stage",
        "run_inpaint": "stage",
    },
)
