"""Sources: where real images come from (``registry``: sample, folder, kaggle), their settings
(``settings``: ``data.*``) and the sources stage (``stage``)."""

from deepfake._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SOURCES": "registry",
        "get_source": "registry",
        "DataConfig": "settings",
        "STAGE": "stage",
        "prepare_sources": "stage",
        "preflight_source": "stage",
        "external_records": "stage",
        "skipped_sources": "stage",
    },
)
