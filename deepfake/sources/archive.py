"""Safe reading of dataset archives (zip and tar): no path escapes, no links, bounded size.

Members are read straight into storage, never unpacked by the archive library itself, so a member
can only land where ``safe_name`` says. A member that is unsafe is refused, with an error naming
it; the other members are still usable. A total uncompressed size over the limit refuses the
whole archive, naming the member that crosses it.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class UnsafeArchive(ValueError):
    """An archive, or one of its members, that must not be extracted."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    is_file: bool
    problem: str | None  # why the member is refused, or None when it is safe
    open: Callable[[], IO[bytes]]


def safe_name(name: str) -> str | None:
    """The normalised relative path of ``name``, or None when it would escape the folder."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return None
    return posixpath.normpath("/".join(p for p in parts if p not in ("", ".")))


# A member's ``open`` is valid only until the iteration moves on (the archive is then closed).


def _zip_members(path: Path) -> Iterator[Member]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            problem = None
            if safe_name(info.filename) is None:
                problem = "its path is absolute or leaves the extraction folder"
            elif stat.S_ISLNK(info.external_attr >> 16):
                problem = "it is a symbolic link"
            yield Member(
                info.filename,
                info.file_size,
                not info.is_dir(),
                problem,
                lambda info=info: archive.open(info),
            )


def _tar_members(path: Path) -> Iterator[Member]:
    with tarfile.open(path) as archive:
        for info in archive:
            problem = None
            if safe_name(info.name) is None:
                problem = "its path is absolute or leaves the extraction folder"
            elif info.issym() or info.islnk():
                problem = "it is a link"
            elif not (info.isfile() or info.isdir()):
                problem = "it is not a regular file"

            def opener(info: tarfile.TarInfo = info) -> IO[bytes]:
                handle = archive.extractfile(info)
                if handle is None:
                    raise UnsafeArchive(f"{path}: member {info.name!r} has no data")
                return handle

            yield Member(info.name, info.size, info.isfile(), problem, opener)


def members(path: str | Path) -> Iterator[Member]:
    """Every member of a zip or tar archive, with its safety verdict."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _zip_members(path)
    if tarfile.is_tarfile(path):
        return _tar_members(path)
    raise UnsafeArchive(f"{path}: not a zip or tar archive")


def read_members(
    path: str | Path,
    wanted: Callable[[str], bool],
    max_bytes: int,
    max_file_bytes: int | None = None,
) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Yield (safe name, data, None) for wanted members, (name, None, reason) for refused ones
    (unsafe, or larger than ``max_file_bytes``: skipped, the rest still read).

    Raises UnsafeArchive when the wanted members add up to more than ``max_bytes``.
    """
    total = 0
    for member in members(path):
        if not member.is_file and member.problem is None:
            continue
        if member.problem is not None:
            if wanted(member.name) or safe_name(member.name) is None:
                yield member.name, None, f"{path}: member {member.name!r} refused: {member.problem}"
            continue
        name = safe_name(member.name)
        if name is None or not wanted(name):
            continue
        if max_file_bytes is not None and member.size > max_file_bytes:
            over = f"{member.size} bytes, over the limit of {max_file_bytes} (data.max_file_bytes)"
            yield member.name, None, f"{path}: member {member.name!r} refused: {over}"
            continue
        total += member.size
        if total > max_bytes:
            raise UnsafeArchive(
                f"{path}: refused: member {member.name!r} takes the uncompressed total past the "
                f"limit of {max_bytes} bytes (data.kaggle.max_extract_bytes)"
            )
        with member.open() as handle:
            data = handle.read(member.size + 1)
        if len(data) > member.size:
            raise UnsafeArchive(f"{path}: member {member.name!r} is larger than its header says")
        yield name, data, None
