"""The sources stage's settings, ``data.*``: what every source shares, and each source's own
section (``data.<source>.*``, from the registry)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from deepfake.hashing import digest_of
from deepfake.images import MAX_FILE_BYTES
from deepfake.section import Section, refuse_moved, with_sections
from deepfake.sources.registry import SOURCES

# Keys of the flat layout that came before the per-source sections, and where they are now.
MOVED = {
    "data.path": "data.folder.path",
    "data.kaggle_dataset": "data.kaggle.dataset",
    "data.kaggle_archive": "data.kaggle.archive",
    "data.max_extract_bytes": "data.kaggle.max_extract_bytes",
    "data.max_tiles_per_image": "data.sample.max_tiles_per_image",
}


class _DataSettings(Section):
    source: Literal[tuple(SOURCES)] = Field(  # type: ignore[valid-type]
        "sample",
        description=f"Where real images come from: one of {', '.join(SOURCES)} (each with its "
        "own settings, data.<source>.*).",
    )
    limit: int | None = Field(
        None, ge=1, description="Take a reproducible subset of this many sources."
    )
    image_size: int = Field(
        128,
        ge=32,
        le=2048,
        description="Side of the square every source is normalised to (pixels).",
    )
    seed: int = Field(0, description="Seed for the subset chosen by data.limit.")
    max_file_bytes: int = Field(
        MAX_FILE_BYTES,
        ge=1024,
        description="Refuse (skip, with a message) an input image file or archive member "
        "larger than this; only regular files are read (FIFOs and devices are skipped).",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved("data", data, MOVED)

    def chosen(self) -> Section:
        """The chosen source's own section."""
        return getattr(self, self.source)

    def digest(self) -> str:
        """What names the sources' folder: the shared settings and the chosen source's own
        (another source's settings change nothing here)."""
        shared = self.model_dump(mode="json", exclude=set(SOURCES))
        return digest_of({**shared, self.source: self.chosen().result_dict()})


DataConfig = with_sections(
    "DataConfig", _DataSettings, {name: source.Config for name, source in SOURCES.items()}, "source"
)
