"""Features: the backbone registry (``backbones``), the extractor that turns images into vectors
(``extractor``), fine-tuning on the training split (``finetune``), the settings (``settings``:
``features.*``) and the features stage (``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BACKBONES": "backbones",
        "Backbone": "backbones",
        "WeightsUnavailable": "backbones",
        "get_backbone": "backbones",
        "preflight_backbone": "backbones",
        "FeaturesConfig": "settings",
        "FeatureExtractor": "extractor",
        "WEIGHTS_FILE": "extractor",
        "fold_batchnorm": "extractor",
        "read_weights": "extractor",
        "resolve_precision": "extractor",
        "STAGE": "stage",
        "INFO_FILE": "stage",
        "extract_features": "stage",
        "cell_matrix": "stage",
        "with_cells": "stage",
        "read_images": "stage",
    },
)
