"""The held-out split: grouped by source photo, decided once before anything learns
(``stage``), and its settings (``settings``: ``split.*``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SplitConfig": "settings",
        "STAGE": "stage",
        "grouped_split": "stage",
        "split_dataset": "stage",
        "split_rows": "stage",
    },
)
