"""The pipeline's settings: every stage's section, assembled, and how they are read.

Each stage's section lives beside the stage (``deepfake/<stage>/settings.py``; a source's or an
inpainting backend's own section in its module); this module puts them together as ``Settings``.
Settings come from defaults, then an optional YAML file, then ``--set key=value`` overrides with
dotted keys (``svm.cv_folds=3``). Unknown keys, retired keys and bad values are refused before
anything runs. The lists of valid names come from the registries; reading them loads neither
torch nor pandas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepfake.detector.settings import SVMConfig
from deepfake.evaluate.settings import EvalConfig
from deepfake.features.settings import FeaturesConfig
from deepfake.hashing import digest_of
from deepfake.inpaint.settings import MOVED as INPAINT_MOVED
from deepfake.inpaint.settings import InpaintConfig
from deepfake.masks.settings import MaskConfig
from deepfake.section import Section
from deepfake.sources.settings import MOVED as DATA_MOVED
from deepfake.sources.settings import DataConfig
from deepfake.split.settings import SplitConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FeaturesConfig",
    "InpaintConfig",
    "MaskConfig",
    "SVMConfig",
    "Settings",
    "SplitConfig",
    "StorageConfig",
    "describe_settings",
    "load_settings",
]


class ConfigError(ValueError):
    """A setting, settings file or override that cannot be used."""


# Keys that moved into a source's or a backend's own section.
MOVED = {**DATA_MOVED, **INPAINT_MOVED}
# Keys of earlier detectors, and what replaced them.
_METHODS = "inpaint.classical.methods (a list: the methods mixed over the records)"
_VARIANTS = "inpaint.sd2.variants (regenerated, spliced or both)"
_SVM = "svm.alpha and svm.top_k (the detector is a linear SVM on cell features)"
_CELLS = "features.cell (every image is scored cell by cell, at native resolution)"
RETIRED = {
    "inpaint.method": _METHODS,
    "inpaint.classical.method": _METHODS,
    "inpaint.paste_back": _VARIANTS,
    "inpaint.sd2.paste_back": _VARIANTS,
    **{f"svm.{key}": _SVM for key in ("C", "kernels", "gamma", "pca_components", "search")},
    "features.pooling": _CELLS,
    "features.crop_size": _CELLS,
}


class StorageConfig(Section):
    root: str = Field("storage", description="Storage root: a local folder or s3://bucket/prefix.")
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, ...); empty = AWS_ENDPOINT_URL or AWS itself.",
    )


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: StorageConfig = StorageConfig()
    data: DataConfig = DataConfig()
    masks: MaskConfig = MaskConfig()
    inpaint: InpaintConfig = InpaintConfig()
    split: SplitConfig = SplitConfig()
    features: FeaturesConfig = FeaturesConfig()
    svm: SVMConfig = SVMConfig()
    evaluate: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, replacement in RETIRED.items():
                node: Any = data
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node is not None:
                    raise ValueError(f"{key} is gone: use {replacement}")
        return data

    @model_validator(mode="after")
    def _enough_sources(self) -> Settings:
        """Refuse a ``data.limit`` that leaves the grouped split fewer than 2 training sources
        (cross-validation needs 2) before any work, not in training after inpainting."""
        limit = self.data.limit
        if limit is not None and _training_sources(limit, self.split.test_size) < 2:
            enough = next(
                n for n in range(3, 1000) if _training_sources(n, self.split.test_size) >= 2
            )
            raise ValueError(
                f"data.limit={limit} leaves {_training_sources(limit, self.split.test_size)} "
                f"source(s) for training once split.test_size={self.split.test_size} is held "
                f"out, and cross-validation needs at least 2: use data.limit >= {enough}"
            )
        return self

    @field_validator("storage", mode="before")
    @classmethod
    def _root_only(cls, value: Any) -> Any:
        """``storage: s3://bucket/prefix`` in a settings file is short for ``storage.root``."""
        return {"root": str(value)} if isinstance(value, str | Path) else value

    def digest(self) -> str:
        return digest_of(self.model_dump(mode="json"))

    def result_dict(self) -> dict[str, Any]:
        """The settings that shape a run's results (not where it keeps its files, nor how fast
        it goes), secrets removed: what a report records and what names its folder."""
        sections = (n for n in type(self).model_fields if n != "storage")
        return _redact({name: getattr(self, name).result_dict() for name in sections})


def _training_sources(sources: int, test_size: float) -> int:
    """How many of ``sources`` source groups the grouped split trains on (scikit-learn's
    GroupShuffleSplit holds out the ceiling of ``test_size`` of them)."""
    return sources - math.ceil(test_size * sources)


_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"svm.alpha=[0.01, 0.1]"`` -> (["svm", "alpha"], [0.01, 0.1]); values are read as YAML
    scalars and lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot read value {raw!r}: {exc}") from None
    return key.split("."), value


def _known_keys(model: type[BaseModel], path: list[str]) -> None:
    current: type[BaseModel] = model
    for depth, part in enumerate(path):
        fields = current.model_fields
        if part not in fields:
            where = ".".join(path[:depth]) or "settings"
            raise ConfigError(
                f"unknown setting {'.'.join(path)!r}: {where} has no {part!r} "
                f"(known: {', '.join(sorted(fields))})"
            )
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth < len(path) - 1 and not is_section:
            raise ConfigError(f"unknown setting {'.'.join(path)!r}: {part!r} has no sub-settings")
        if is_section:
            current = annotation


def load_settings(
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    storage: str | None = None,
) -> Settings:
    """Defaults, then ``config_file`` (YAML), then ``storage``, then ``overrides``."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"settings file {path} must hold a mapping, not {type(loaded).__name__}"
            )
        data = loaded or {}
    if storage is not None:
        if isinstance(data.get("storage"), dict):
            data["storage"] = {**data["storage"], "root": storage}
        else:
            data["storage"] = {"root": storage}
    for text in overrides or []:
        path_parts, value = parse_override(text)
        key = ".".join(path_parts)
        if key in MOVED:
            raise ConfigError(f"setting {key!r} is now {MOVED[key]!r}")
        if key in RETIRED:
            raise ConfigError(f"setting {key!r} is gone: use {RETIRED[key]}")
        _known_keys(Settings, path_parts)
        node = data
        for part in path_parts[:-1]:
            node = node.setdefault(part, {})
        node[path_parts[-1]] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    """Each problem with the setting's dotted name, and the value given when it is short."""
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if not where:  # a rule over several sections: its message names them
            out.append(str(err.get("ctx", {}).get("error", err["msg"])))
            continue
        given = err.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
        out.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(out)


def describe_settings() -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every setting, for ``--help``."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            default = field.default
            shown = "" if default is None else json.dumps(default, default=str)
            rows.append((f"{prefix}{name}", shown, field.description or ""))

    walk(Settings, "")
    return rows
