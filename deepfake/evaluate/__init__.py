"""Evaluation, split by job: ``metrics`` (the table of metric names, the figures), ``protocols``
(bootstrap, robustness, shortcut audit, external set), ``plots``, ``report`` and the evaluation
stage (``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "METRICS": "metrics",
        "HEADLINE_METRICS": "metrics",
        "binary_metrics": "metrics",
        "evaluate": "metrics",
        "report_markdown": "report",
        "embed_images": "report",
        "STAGE": "stage",
        "evaluate_detector": "stage",
    },
)
