"""The one table of metric names: ``LABELS`` (name in metrics.json -> label for people) and the
lists of which figures each view shows, in order (``HEADLINE_METRICS``: the report's headline
table; ``SUMMARY``: the run summary and the Prefect UI's table; ``PROTOCOL_FIGURES``: each
held-out detector's figures; ``COMPARED``: frozen vs fine-tuned). The report, the Prefect tasks
and the tests read them; names only, so that reading them loads no scikit-learn.
"""

from __future__ import annotations

LABELS: dict[str, str] = {
    "roc_auc": "ROC-AUC",
    "average_precision": "average precision",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "precision": "precision",
    "recall": "recall (true positive rate)",
    "specificity": "specificity (true negative rate)",
    "f1": "F1",
    "eer": "equal error rate",
    "tpr_at_1pct_fpr": "recall at 1 % false positives",
    "tpr_at_5pct_fpr": "recall at 5 % false positives",
    "recall_at_5pct_fpr_small": "recall of edits under 10 % of the image, at 5 % false positives",
    "brier": "Brier score of the probabilities",
    "cv_roc_auc_mean": "ROC-AUC on held-out folds of the training split (mean)",
    "cv_roc_auc_std": "ROC-AUC on held-out folds of the training split (std)",
    "n_test_real": "real test images",
    "n_test_inpainted": "inpainted test images",
}
# The headline figures, in the order they are shown.
HEADLINE_METRICS = ("roc_auc", "average_precision", "accuracy", "balanced_accuracy", "precision",
                    "recall", "f1")  # fmt: skip
METRICS: tuple[tuple[str, str], ...] = tuple((name, LABELS[name]) for name in HEADLINE_METRICS)
# What a run's summary and the Prefect UI's table show.
SUMMARY = (*HEADLINE_METRICS, "cv_roc_auc_mean", "cv_roc_auc_std", "n_test_real",
           "n_test_inpainted")  # fmt: skip
# Each held-out detector's figures (repeated splits, left-out methods), summarised over splits,
# and those the report shows over the repeated splits and per left-out method.
PROTOCOL_FIGURES = ("roc_auc", "balanced_accuracy", "recall", "specificity", "tpr_at_5pct_fpr",
                    "recall_at_5pct_fpr_small")  # fmt: skip
OVER_SPLITS = ("roc_auc", "balanced_accuracy", "recall", "specificity", "recall_at_5pct_fpr_small")
LEFT_OUT = ("roc_auc", "balanced_accuracy", "recall", "specificity")
# The figures that tell a fine-tuned backbone from the frozen one (report and comparison).
COMPARED = ("roc_auc", "average_precision", "balanced_accuracy", "eer", "tpr_at_5pct_fpr",
            "brier", "cv_roc_auc_mean")  # fmt: skip
