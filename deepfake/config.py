"""One typed settings model for every knob of the pipeline.

Settings come from defaults, then an optional YAML file, then ``--set key=value`` overrides with
dotted keys (``svm.cv_folds=3``). Unknown keys and bad values are refused before anything runs.
The lists of valid names (sources, mask types, inpainting backends and their sections,
backbones) come from the registries; reading them loads neither torch nor pandas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from deepfake.features.backbones import BACKBONES, DEFAULT_BACKBONE
from deepfake.hashing import digest_of
from deepfake.inpaint.registry import BACKENDS
from deepfake.masks.shapes import MASK_TYPES
from deepfake.sources.registry import SOURCES


class ConfigError(ValueError):
    """A setting, settings file or override that cannot be used."""


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
        for name in type(self).model_fields:
            if name in self.EXECUTION_ONLY:
                continue
            value = getattr(self, name)
            has_result = hasattr(value, "result_dict")
            out[name] = value.result_dict() if has_result else self.model_dump(mode="json")[name]
        return out


class DataConfig(Section):
    source: Literal[tuple(SOURCES)] = Field(  # type: ignore[valid-type]
        "sample",
        description="Where real images come from: bundled sample photos, a folder, or the "
        "Kaggle DeepfakeArt dataset.",
    )
    path: str | None = Field(None, description="Folder of real images (data.source=folder).")
    limit: int | None = Field(
        None, ge=1, description="Take a reproducible subset of this many sources."
    )
    image_size: int = Field(
        128,
        ge=32,
        le=2048,
        description="Side of the square every source is normalised to (pixels).",
    )
    max_tiles_per_image: int = Field(
        12, ge=1, description="Sample data: at most this many tiles cut from one photo."
    )
    seed: int = Field(0, description="Seed for the subset chosen by data.limit.")
    kaggle_dataset: str = Field(
        "danielmao2019/deepfakeart", description="Kaggle dataset (owner/name) to download."
    )
    kaggle_archive: str | None = Field(
        None,
        description="Use this DeepfakeArt archive (zip/tar) or extracted folder instead of "
        "downloading.",
    )
    max_extract_bytes: int = Field(
        60 * 2**30,
        ge=1,
        description="Refuse a Kaggle archive whose wanted members add up to more than this.",
    )

    @field_validator("path", "kaggle_archive")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() if value else value


class MaskConfig(Section):
    types: tuple[Literal[tuple(MASK_TYPES)], ...] = Field(  # type: ignore[valid-type]
        tuple(MASK_TYPES),
        min_length=1,
        description="Mask types made for every source: the original project's five "
        "(diagonal halves, random rectangles: 40-60 % of the image) and the edits users meet "
        "(ellipse, blob, brush, freeform: 2-30 %).",
    )
    seed: int = Field(0, description="Seed of the random masks (per source and mask type).")


class _InpaintSettings(Section):
    """What every backend shares; each backend's own settings are a section of their own,
    added from the registry below (``inpaint.classical.*``, ``inpaint.sd2.*``)."""

    backend: Literal[("auto", *BACKENDS)] = Field(  # type: ignore[valid-type]
        "auto",
        description="Inpainting backend: sd2 (Stable Diffusion 2), classical (OpenCV) or auto "
        "(sd2 when CUDA and the weights are available, else classical, with a warning).",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Images per inpainting batch (one subflow each); empty = the backend's "
        "default: 8 for sd2, 256 for classical.",
    )
    seed: int = Field(0, description="Seed of the generator (per record: seed + record id).")
    deployment: str | None = Field(
        None,
        description="Send each batch to this Prefect deployment (flow/deployment, e.g. "
        "inpaint-batch/gpu) and wait for all; empty = run batches as local subflows.",
    )
    batch_attempts: int = Field(
        3, ge=1, description="With inpaint.deployment: runs of one batch before the stage fails."
    )

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"batch_size", "deployment", "batch_attempts"}
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if f"inpaint.{key}" in MOVED:
                    raise ValueError(f"inpaint.{key} is now {MOVED[f'inpaint.{key}']}")
        return data

    @property
    def effective_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return BACKENDS[self.backend if self.backend != "auto" else "sd2"].default_batch_size


# Every backend's settings under its name: adding a backend to the registry adds its section.
InpaintConfig = create_model(
    "InpaintConfig",
    __base__=_InpaintSettings,
    **{
        name: (
            backend.Config,
            Field(default_factory=backend.Config, description=f"The {name} backend's settings."),
        )
        for name, backend in BACKENDS.items()
    },
)
# Keys of the flat layout that came before the backend sections, and where they are now.
MOVED = {
    f"inpaint.{field}": f"inpaint.{name}.{field}"
    for name, backend in BACKENDS.items()
    for field in backend.Config.model_fields
}
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


class FeaturesConfig(Section):
    backbone: Literal[tuple(BACKBONES)] = Field(  # type: ignore[valid-type]
        DEFAULT_BACKBONE, description="CNN backbone (an ImageNet model of the registry)."
    )
    input_size: int | None = Field(
        None,
        ge=32,
        description="Resize images to this side before the CNN; empty = native resolution "
        "(forensic traces of inpainting fade when an image is resampled).",
    )
    cell: int = Field(
        8,
        ge=4,
        le=64,
        description="Side of a cell (pixels of the CNN's input): the detector scores every cell, "
        "so an edit of a few cells is seen; the heat maps have this resolution.",
    )
    cells_per_image: int = Field(
        24,
        ge=2,
        description="Training cells kept per image: half inside the inpainted region when there "
        "is one, half clean.",
    )
    finetune_epochs: int = Field(
        0,
        ge=0,
        description="Fine-tune the backbone for this many epochs on the training split only "
        "(JPEG/blur/flip augmentation) before extracting features; 0 = frozen ImageNet weights.",
    )
    finetune_lr: float = Field(1e-4, gt=0, description="Fine-tuning learning rate (backbone).")
    finetune_batch_size: int = Field(32, ge=2, description="Images per fine-tuning step.")
    seed: int = Field(0, description="Seed of fine-tuning (head init, order, augmentation).")
    precision: Literal["float32", "auto", "bfloat16", "float16"] = Field(
        "float32",
        description="Compute precision of the backbone (autocast); auto = bfloat16 where the "
        "device computes it natively (recent GPUs, CPUs with AVX512-BF16/AMX), else float32. "
        "Faster, but the vectors differ slightly from float32 ones.",
    )
    batch_size: int = Field(64, ge=1, description="Images per forward pass.")
    device: str = Field(
        "auto", description="torch device for feature extraction (auto = cuda if any)."
    )

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})

    def frozen(self) -> FeaturesConfig:
        """The same features without fine-tuning (the baseline a fine-tuned run is compared to)."""
        return self.model_copy(update={"finetune_epochs": 0})


class SplitConfig(Section):
    test_size: float = Field(
        0.25, gt=0, lt=1, description="Share of source groups held out for testing."
    )
    seed: int = Field(0, description="Seed of the grouped train/test split.")


class SVMConfig(Section):
    """The detector: a linear SVM on cell features, its cells' decision values aggregated into
    the image's."""

    alpha: tuple[float, ...] = Field(
        (0.01, 0.03, 0.1, 0.3),
        min_length=1,
        description="L2 penalties of the linear SVM searched (larger = simpler model).",
    )
    top_k: tuple[int, ...] = Field(
        (1, 2, 4, 8, 16),
        min_length=1,
        description="Aggregations searched: an image's score is the mean of its k highest cell "
        "decision values (k = 1 is the maximum); chosen by grouped cross-validation.",
    )
    cv_folds: int = Field(3, ge=2, description="Grouped cross-validation folds (alpha and k).")
    seed: int = Field(0, description="Seed of the grouped folds and the SVM.")
    n_jobs: int = Field(-1, description="Parallel fits (-1 = all cores).")

    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"n_jobs"})


class EvalConfig(Section):
    bootstrap: int = Field(
        1000, ge=0, description="Bootstrap resamples (by source group) for confidence intervals."
    )
    robustness: bool = Field(
        True, description="Score the test split again after JPEG, downscaling and blur."
    )
    shortcut_audit: bool = Field(
        True, description="Check how well metadata alone (size, format, mean) separates classes."
    )
    compare_frozen: bool = Field(
        True,
        description="With features.finetune_epochs > 0, also train a detector on frozen features "
        "and compare the two in the report.",
    )
    leave_one_method_out: bool = Field(
        True,
        description="For every inpainting method: a detector trained on the others, tested on "
        "it (real test images against that method's).",
    )
    repeats: int = Field(
        3,
        ge=1,
        description="Grouped train/test splits (split.seed, split.seed + 1, ...) over which the "
        "headline figures and leave-one-method-out are reported as mean and std.",
    )
    examples: int = Field(
        6, ge=0, description="Test images shown with their true mask and heat map."
    )
    seed: int = Field(0, description="Seed of the bootstrap.")


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
    """``"svm.C=[1, 10]"`` -> (["svm", "C"], [1, 10]); values are read as YAML scalars/lists."""
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
