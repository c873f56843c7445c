"""The detector: a linear SVM on cell features (``model``), trained and tuned on held-out data
only (``training``), the held-out detectors the evaluation reports (``heldout``), scoring
(``scoring``), the bundle that holds a trained detector (``bundle``: its files and the ``Detector``
that loads one), the settings (``settings``: ``svm.*``) and the detector stage (``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BUNDLE_FILE": "bundle",
        "MODEL_FILE": "bundle",
        "Detector": "bundle",
        "load_detector": "bundle",
        "load_model": "model",
        "probability": "model",
        "top_k_mean": "model",
        "SVMConfig": "settings",
        "STAGE": "stage",
        "HeldOut": "settings",
        "train_detector": "stage",
    },
)
