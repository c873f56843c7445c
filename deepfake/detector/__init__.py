"""The detector: a linear SVM on cell features (``model``), trained and tuned on held-out data
only (``training``), scoring images (``scoring``), and the detector stage (``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MODEL_FILE": "model",
        "load_model": "model",
        "probability": "model",
        "top_k_mean": "model",
        "STAGE": "stage",
        "BUNDLE_FILE": "stage",
        "train_detector": "stage",
    },
)
