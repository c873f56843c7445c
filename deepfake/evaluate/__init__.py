"""Evaluation, split by job: ``names`` (the table of metric names), ``metrics`` (the figures),
``protocol_figures`` (the held-out detectors: repeated splits, left-out methods), ``checks``
(bootstrap, robustness, shortcut audit, external set), ``localisation``, ``plots``, ``report``,
``outputs`` (its files read back), the settings (``settings``: ``evaluate.*``) and the evaluation
stage (``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "METRICS": "names",
        "HEADLINE_METRICS": "names",
        "binary_metrics": "metrics",
        "evaluate": "metrics",
        "report_markdown": "report",
        "embed_images": "report",
        "EvalConfig": "settings",
        "STAGE": "stage",
        "evaluate_detector": "stage",
        "evaluation_metrics": "outputs",
    },
)
