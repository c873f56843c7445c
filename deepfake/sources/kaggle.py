"""Kaggle DeepfakeArt: download (official client), safe extraction, pruning.

The dataset's inpainting category is a set of folders ``similar/inpainting/<id>/`` holding
``original.png`` (the source), ``inpainting.png`` (the authors' Stable Diffusion 2 inpainting),
``mask.png`` and ``group.png`` (a preview grid). As the original project's ``delete.py`` did, only
``original.png`` becomes a training source (record id = folder id). The authors' own
``inpainting.png`` files, with their masks, are kept apart as an external test set: made with
someone else's masks and settings, they measure how far the detector generalises.

Downloads use the official ``kaggle`` client. The archive is kept in storage under
``raw/kaggle/``, so a rerun does not download again. The ``kaggle`` source of the sources stage
(settings ``data.kaggle.*``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from deepfake.hashing import sha256
from deepfake.images import ImageError, decode, encode_png, square
from deepfake.progress import Progress
from deepfake.section import Section, Unavailable
from deepfake.sources.archive import UnsafeArchive, members, read_members
from deepfake.sources.common import EXTERNAL, Row, choose_subset, source_row
from deepfake.storage import Refused, Storage, is_url

if TYPE_CHECKING:
    from deepfake.sources.settings import DataConfig

log = logging.getLogger("deepfake")


class Config(Section):
    dataset: str = Field(
        "danielmao2019/deepfakeart", description="Kaggle dataset (owner/name) to download."
    )
    archive: str | None = Field(
        None,
        description="Use this DeepfakeArt archive (zip/tar, local or s3://) or extracted folder "
        "instead of downloading.",
    )
    max_extract_bytes: int = Field(
        60 * 2**30,
        ge=1,
        description="Refuse an archive whose wanted members add up to more than this.",
    )

    @field_validator("archive")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() if value else value


_MEMBER = re.compile(r"(?:^|/)similar/inpainting/([^/]+)/(original|inpainting|mask)\.png$")
CREDENTIALS_HELP = (
    "Kaggle credentials are missing or were refused. Provide them in one of the standard places: "
    "the KAGGLE_API_TOKEN environment variable (or ~/.kaggle/access_token), the KAGGLE_USERNAME "
    "and KAGGLE_KEY environment variables, or ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/"
    "kaggle.json). Tokens are made at https://www.kaggle.com/settings/api. Or pass an archive "
    "you already have: --set data.kaggle.archive=PATH"
)


class KaggleAuthError(Unavailable, PermissionError):
    """Credentials missing or refused: retrying cannot help."""


class KaggleDownloadError(OSError):
    """The download failed for a reason that retries did not cure."""


class KaggleClient(Protocol):
    def download(self, dataset: str, dest: Path) -> Path:
        """Download the dataset's archive into folder ``dest``; return the archive's path."""
        ...


class OfficialKaggleClient:
    """The ``kaggle`` package's API: authentication from the standard places, one zip download.

    The Kaggle API serves a dataset as one archive (single files can be fetched, but not a
    folder of 5,063 sub-folders), so the whole archive is downloaded once and kept.
    """

    def authenticate(self):  # noqa: ANN201 - the client's own type
        """The authenticated API client, or KaggleAuthError saying where credentials go."""
        # Importing ``kaggle`` authenticates and prints help text on failure: keep it quiet.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            try:
                api.authenticate()
            except (SystemExit, Exception):
                # No chained cause: a client's error text may echo a key.
                raise KaggleAuthError(CREDENTIALS_HELP) from None
        return api

    def download(self, dataset: str, dest: Path) -> Path:
        api = self.authenticate()
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                api.dataset_download_files(dataset, path=str(dest), quiet=True, unzip=False)
            except Exception as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status in (401, 403):
                    raise KaggleAuthError(CREDENTIALS_HELP) from None
                if status == 404:
                    raise FileNotFoundError(f"Kaggle dataset {dataset!r} was not found") from None
                raise
        archives = sorted(dest.glob("*.zip"))
        if not archives:
            raise KaggleDownloadError(f"the Kaggle client wrote no archive for {dataset!r}")
        return archives[0]


def download_with_retries(
    client: KaggleClient,
    dataset: str,
    dest: Path,
    attempts: int = 4,
    backoff: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Retry network errors with exponential backoff; never retry authentication errors."""
    for attempt in range(1, attempts + 1):
        try:
            return client.download(dataset, dest)
        except (KaggleAuthError, FileNotFoundError):
            raise
        except Exception as exc:
            if attempt == attempts:
                raise KaggleDownloadError(
                    f"downloading Kaggle dataset {dataset!r} failed {attempts} times; last error: "
                    f"{type(exc).__name__}"
                ) from None
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "kaggle: download attempt %d/%d failed (%s); retrying in %.0f s",
                attempt, attempts, type(exc).__name__, delay,
            )  # fmt: skip
            sleep(delay)
    raise AssertionError("unreachable")


def archive_uri(dataset: str) -> str:
    owner, _, name = dataset.partition("/")
    return f"raw/kaggle/{owner}__{name}/{name}.zip"


def download_to_storage(
    storage: Storage, dataset: str, uri: str, client: KaggleClient | None = None
) -> None:
    """Download the dataset's archive once and keep it at ``uri`` in storage."""
    with tempfile.TemporaryDirectory(prefix="kaggle-") as tmp:
        log.info("kaggle: downloading %s (kept in %s)", dataset, storage.uri(uri))
        path = download_with_retries(client or OfficialKaggleClient(), dataset, Path(tmp))
        storage.put_file(path, uri)


@contextlib.contextmanager
def local_archive(
    storage: Storage, dataset: str, given: str | None, client: KaggleClient | None = None
) -> Iterator[Path]:
    """A local path to the dataset (archive or extracted folder), downloading it at most once."""
    if given and is_url(given):  # an archive in an object store: fetched to a local copy
        remote, name = Storage.locate(given, near=storage)
        with tempfile.TemporaryDirectory(prefix="kaggle-") as tmp:
            local = Path(tmp) / name
            remote.get_file(name, local)
            yield local
        return
    if given:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data.kaggle.archive {given}: no such file or folder")
        yield path
        return
    uri = archive_uri(dataset)
    if not storage.exists(uri):
        download_to_storage(storage, dataset, uri, client)
    else:
        log.info("kaggle: using the archive already in %s", storage.uri(uri))
    if storage.is_local:
        yield Path(storage.uri(uri))
        return
    with tempfile.TemporaryDirectory(prefix="kaggle-") as tmp:
        local = Path(tmp) / Path(uri).name
        storage.get_file(uri, local)
        yield local


def list_folders(path: Path) -> dict[str, set[str]]:
    """folder id -> roles present (original/inpainting/mask), from names only."""
    folders: dict[str, set[str]] = {}
    for name in _names(path):
        match = _MEMBER.search(name)
        if match:
            folders.setdefault(match.group(1), set()).add(match.group(2))
    return folders


def _names(path: Path) -> Iterator[str]:
    if path.is_dir():
        yield from sorted(Storage(path).list_files(""))
        return
    for member in members(path):
        yield member.name


def read_folders(
    path: Path, ids: set[str], max_bytes: int, max_file_bytes: int | None = None
) -> Iterator[tuple[str, str, bytes | None, str | None]]:
    """Yield (folder id, role, data, problem) for the wanted files of folders ``ids`` (a file
    that is not regular or is over ``max_file_bytes`` comes with its problem, unread)."""

    def wanted(name: str) -> bool:
        match = _MEMBER.search(name)
        return bool(match and match.group(1) in ids)

    if path.is_dir():
        extracted = Storage(path)
        total = 0
        for name in sorted(extracted.list_files("")):
            if not wanted(name):
                continue
            match = _MEMBER.search(name)
            try:
                data = extracted.read_bytes(name, limit=max_file_bytes)
            except Refused as exc:
                problem = f"{path}: {name!r} refused: {exc.reason}"
                yield match.group(1), match.group(2), None, problem  # type: ignore[union-attr]
                continue
            total += len(data)
            if total > max_bytes:
                raise UnsafeArchive(f"{path}: {name!r} takes the total past {max_bytes} bytes")
            yield match.group(1), match.group(2), data, None  # type: ignore[union-attr]
        return
    for name, data, problem in read_members(path, wanted, max_bytes, max_file_bytes):
        match = _MEMBER.search(name)
        if match is None:
            yield "", "", None, problem
        else:
            yield match.group(1), match.group(2), data, problem


def inputs(storage: Storage, cfg: DataConfig) -> dict[str, str]:
    """The archive's digest (an extracted folder's listing; an object's ETag): of the one given,
    or of the download kept in storage, downloading it first when there is none."""
    section = cfg.kaggle
    if section.archive:
        remote, name = Storage.locate(section.archive, near=storage)
        if not remote.exists(name):
            raise FileNotFoundError(
                f"data.kaggle.archive {section.archive}: no such file or folder"
            )
        return remote.fingerprints(name)
    uri = archive_uri(section.dataset)
    if not storage.exists(uri):
        download_to_storage(storage, section.dataset, uri)
    return storage.fingerprints(uri)


def preflight(storage: Storage, cfg: DataConfig) -> None:
    """Kaggle credentials, when the archive has to be downloaded (none given, none kept)."""
    section = cfg.kaggle
    if section.archive or storage.exists(archive_uri(section.dataset)):
        return
    OfficialKaggleClient().authenticate()


def prepare(storage: Storage, cfg: DataConfig, folder: str) -> tuple[list[Row], list[Row]]:
    """Sources from DeepfakeArt originals; the authors' inpaintings into ``external.parquet``."""
    section = cfg.kaggle
    with (
        local_archive(storage, section.dataset, section.archive) as path,
        storage.batched_writes() as put,
    ):
        folders = list_folders(path)
        skipped = [
            {"source_id": fid, "reason": f"similar/inpainting/{fid}: no original.png"}
            for fid in sorted(folders)
            if "original" not in folders[fid]
        ]
        usable = sorted(fid for fid, roles in folders.items() if "original" in roles)
        if not usable:
            raise ValueError(f"{path}: no similar/inpainting/<id>/original.png found")
        chosen = {usable[i] for i in choose_subset(usable, cfg.limit, cfg.seed)}
        rows, external, problems = _read_chosen(path, chosen, cfg, folder, put)
    skipped += problems
    originals = {row["source_id"] for row in rows}
    external = {fid: item for fid, item in external.items() if fid in originals}
    _write_external(storage, folder, external)
    log.info("kaggle: %d sources, %d external inpaintings", len(rows), len(external))
    return rows, skipped


def _read_chosen(
    path: Path, chosen: set[str], cfg: DataConfig, folder: str, put: Callable[[str, bytes], None]
) -> tuple[list[Row], dict[str, dict[str, str]], list[Row]]:
    """Write the chosen folders' originals (normalised) and the authors' inpaintings and masks:
    (source rows, external files by folder id, skipped inputs)."""
    rows, external, skipped = [], {}, []
    progress = Progress("kaggle sources", len(chosen))
    found = read_folders(path, chosen, cfg.kaggle.max_extract_bytes, cfg.max_file_bytes)
    for fid, role, data, problem in found:
        if problem is not None:
            log.warning("kaggle: %s", problem)
            skipped.append({"source_id": fid or "archive", "reason": problem})
            continue
        name = f"{path}: similar/inpainting/{fid}/{role}.png"
        try:
            image = decode(data or b"", name)
        except ImageError as exc:
            log.warning("skipping %s", exc)
            skipped.append({"source_id": fid, "reason": str(exc)})
            continue
        if role == "original":
            rows.append(source_row(put, folder, fid, fid, square(image, cfg.image_size)))
            progress.advance()
        elif role == "inpainting":
            png = encode_png(np.asarray(square(image, cfg.image_size)))
            uri = f"{folder}/external/{fid}.png"
            put(uri, png)
            external.setdefault(fid, {}).update(uri=uri, sha256=sha256(png))
        else:
            mask = square(image.convert("L"), cfg.image_size, Image.Resampling.NEAREST)
            uri = f"{folder}/external/{fid}_mask.png"
            put(uri, encode_png(np.asarray(mask)))
            external.setdefault(fid, {})["mask_uri"] = uri
    return rows, {fid: item for fid, item in external.items() if "uri" in item}, skipped


def _write_external(storage: Storage, folder: str, external: dict[str, dict[str, str]]) -> None:
    """The authors' inpaintings of the kept sources, as the external test set's manifest."""
    import pandas as pd

    columns = ["record_id", "source_id", "group", "variant", "label", "uri", "sha256", "mask_uri"]
    rows = [
        {
            "record_id": f"{fid}__external",
            "source_id": fid,
            "group": fid,
            "variant": "external",
            "label": 1,
            "uri": item["uri"],
            "sha256": item["sha256"],
            "mask_uri": item.get("mask_uri", ""),
        }
        for fid, item in sorted(external.items())
    ]
    storage.write_parquet(f"{folder}/{EXTERNAL}", pd.DataFrame(rows, columns=columns))
