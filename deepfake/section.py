"""What every settings section shares, and the one error a missing prerequisite raises.

A stage's settings live beside the stage (``deepfake/<stage>/settings.py``); a source's or an
inpainting backend's own section lives in its module. Each is a ``Section``: frozen, unknown keys
refused, and able to say which of its values shape results (everything but ``EXECUTION_ONLY``:
settings that change how fast or where the work runs, not what it produces). Only pydantic is
imported here, so that reading the settings stays cheap.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from deepfake.hashing import digest_of


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Settings that change how fast the work goes, or where, but not what it produces.
    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset()

    def digest(self) -> str:
        """Stable hash of this section, used to name stage outputs."""
        return digest_of(self.model_dump(mode="json"))

    def result_dict(self) -> dict[str, Any]:
        """The settings that shape results: every field but the execution-only ones, nested
        sections the same way."""
        out = {}
        dumped = self.model_dump(mode="json")
        for name in type(self).model_fields:
            if name in self.EXECUTION_ONLY:
                continue
            value = getattr(self, name)
            out[name] = value.result_dict() if isinstance(value, Section) else dumped[name]
        return out


def with_sections(
    name: str, base: type[Section], sections: dict[str, type[Section]], kind: str
) -> type[Section]:
    """``base`` with one more field per registry entry: each entry's own section, under its
    name (``inpaint.sd2``, ``data.kaggle``), so that registering a backend or a source adds its
    settings."""
    fields: dict[str, Any] = {
        key: (section, Field(default_factory=section, description=f"The {key} {kind}'s settings."))
        for key, section in sections.items()
    }
    return create_model(name, __base__=base, **fields)


def refuse_moved(prefix: str, data: Any, moved: dict[str, str]) -> Any:
    """A ``mode="before"`` validator's body: refuse keys of an earlier layout of section
    ``prefix``, naming where each one is now."""
    if isinstance(data, dict):
        for key in data:
            if f"{prefix}.{key}" in moved:
                raise ValueError(f"{prefix}.{key} is now {moved[f'{prefix}.{key}']}")
    return data


class Unavailable(Exception):
    """Something a run needs cannot be had here (a model, weights, credentials, a folder); the
    message says what and how to provide it. Every source, backend and backbone raises this (or
    a subclass) from its preflight check, so a command line can refuse the run before any work
    with one line."""
