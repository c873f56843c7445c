"""One storage layer over fsspec URLs: a local folder or ``s3://bucket/prefix``.

Every write is atomic: a local file is written under a temporary name in the same folder and
renamed into place; an object store gets one PUT. A reader never sees half a file. pandas and
pyarrow are imported by the Parquet methods only, so that the sources (which the settings read)
can use storage without loading them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:
    import pandas as pd


class StorageError(OSError):
    """A storage location that cannot be read or written."""


# Reads that fail for a reason that may pass (a dropped connection, an I/O hiccup, throttling
# that outlasted the S3 client's own retries) are tried this many times in all, with a pause
# doubling from READ_PAUSE seconds; a file that is not there or may not be read fails at once.
READ_ATTEMPTS = 3
READ_PAUSE = 0.5


class Refused(StorageError):
    """A file that is not read: not a regular file (a FIFO, a device), or over a size limit."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def is_permanent(exc: BaseException) -> bool:
    """True for read errors that trying again cannot cure."""
    permanent = (StorageError, FileNotFoundError, PermissionError, IsADirectoryError,
                 NotADirectoryError)  # fmt: skip
    return isinstance(exc, permanent) or not isinstance(exc, OSError)


def _named(exc: OSError, location: str) -> OSError:
    """``exc`` as the same kind of error, naming ``location`` (itself when it names a file)."""
    if exc.filename or isinstance(exc, StorageError):
        return exc
    try:
        if exc.errno is not None and exc.strerror:
            return type(exc)(exc.errno, exc.strerror, location)
        return type(exc)(f"{location}: {exc}")
    except TypeError:  # an error class with a constructor of its own
        return exc


def is_url(location: str | Path) -> bool:
    """True for an object-store URL (``s3://...``), False for a local path."""
    return "://" in str(location) and not str(location).startswith("file://")


def retry_policy() -> dict[str, Any]:
    """botocore's retries: 8 attempts in "standard" mode unless AWS_MAX_ATTEMPTS (a whole number,
    at least 1) or AWS_RETRY_MODE (legacy, standard, adaptive) say otherwise."""
    attempts = os.environ.get("AWS_MAX_ATTEMPTS", "8")
    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    if not attempts.isdigit() or int(attempts) < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS={attempts!r}: expected a whole number, at least 1")
    if mode not in ("legacy", "standard", "adaptive"):
        raise ValueError(f"AWS_RETRY_MODE={mode!r}: expected legacy, standard or adaptive")
    return {"max_attempts": int(attempts), "mode": mode}


def s3_options(endpoint_url: str | None = None) -> dict[str, Any]:
    """s3fs options: endpoint from the argument or AWS_ENDPOINT_URL(_S3), retrying transient errors.

    Credentials are left to botocore's standard chain (environment, profiles, instance roles).
    """
    endpoint = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    options: dict[str, Any] = {
        # "standard" retry mode retries throttling, 5xx and dropped connections with backoff;
        # AWS_MAX_ATTEMPTS and AWS_RETRY_MODE change it, as for every AWS tool.
        "config_kwargs": {"retries": retry_policy()},
        # Several processes write the same prefix: never answer from a stale listing.
        "use_listings_cache": False,
    }
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


class Storage:
    """Files under one root URL; methods take paths relative to the root, or absolute URLs."""

    def __init__(
        self, root: str | Path, endpoint_url: str | None = None, **storage_options: Any
    ) -> None:
        root = str(root)
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        if root.startswith(("s3://", "s3a://")):
            storage_options = {**s3_options(endpoint_url), **storage_options}
        self.options = storage_options
        self.fs, self._root_path = fsspec.core.url_to_fs(root, **storage_options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    @classmethod
    def open(cls, cfg: Any) -> Storage:
        """Storage for a ``StorageConfig`` (root and endpoint)."""
        return cls(cfg.root, cfg.endpoint_url)

    @classmethod
    def locate(cls, url: str | Path, near: Storage | None = None) -> tuple[Storage, str]:
        """The storage holding the file or folder ``url`` (local path or ``s3://...``), and its
        name there; an ``s3://`` URL is reached like ``near`` when given (same endpoint)."""
        parent, name = posixpath.split(str(url).rstrip("/"))
        parent = parent or "."
        return (near.sibling(parent) if near is not None else cls(parent)), name

    def sibling(self, url: str) -> Storage:
        """Storage for another location, reached like this one: an ``s3://`` input next to S3
        storage uses the same endpoint and options (MinIO, say)."""
        same_kind = is_url(url) and not self.is_local
        return Storage(url, **(self.options if same_kind else {}))

    def check(self) -> None:
        """Fail fast, with one clear message, when the root cannot be used (S3: bucket, access)."""
        if self.is_local:
            return
        from botocore.exceptions import NoCredentialsError  # s3fs's own dependency

        bucket = self._root_path.split("/", 1)[0]
        try:
            self.fs.ls(bucket, refresh=True)
        except NoCredentialsError:
            raise StorageError(
                f"storage {self.root}: no AWS credentials were found (environment, profile or "
                "instance role)"
            ) from None
        except FileNotFoundError:
            raise StorageError(f"storage {self.root}: bucket {bucket!r} does not exist") from None
        except PermissionError:
            raise StorageError(
                f"storage {self.root}: access to bucket {bucket!r} was refused; check the AWS "
                "credentials (environment, profile or instance role)"
            ) from None
        except OSError as exc:
            raise StorageError(
                f"storage {self.root}: cannot reach bucket {bucket!r} ({type(exc).__name__})"
            ) from None

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def uri(self, *parts: str) -> str:
        """URL of ``parts`` joined under the root."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def _path(self, uri: str) -> str:
        if "://" in uri and not uri.startswith("file://"):
            return self.fs._strip_protocol(uri)
        if uri.startswith("file://"):
            uri = uri[len("file://") :]
        return uri if os.path.isabs(uri) or "://" in uri else posixpath.join(self._root_path, uri)

    @contextlib.contextmanager
    def _naming(self, uri: str) -> Iterator[None]:
        """Errors of an object store named by the location they concern (S3's name none)."""
        try:
            yield
        except OSError as exc:
            named = _named(exc, uri if "://" in uri else self.uri(uri))
            if named is exc:
                raise
            raise named from exc

    def exists(self, uri: str) -> bool:
        with self._naming(uri):
            return self.fs.exists(self._path(uri))

    def read_bytes(self, uri: str, limit: int | None = None) -> bytes:
        """The file's bytes. Only a regular file is read (a FIFO would block, a device never
        end); with ``limit``, a file larger than that is refused (``Refused``) after reading at
        most ``limit + 1`` bytes."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._read(self._path(uri), limit)
            except FileNotFoundError:
                raise StorageError(
                    f"{self.uri(uri) if '://' not in uri else uri}: no such file"
                ) from None
            except OSError as exc:
                if is_permanent(exc) or attempt + 1 == READ_ATTEMPTS:
                    with self._naming(uri):
                        raise
                time.sleep(READ_PAUSE * 2**attempt)
        raise AssertionError("unreachable")

    def _read(self, path: str, limit: int | None) -> bytes:
        if self.is_local:
            with open_regular(path, limit) as handle:
                data = handle.read() if limit is None else handle.read(limit + 1)
        elif limit is None:
            data = self.fs.cat_file(path)
        else:  # a ranged GET: never more than the limit and one byte
            data = self.fs.cat_file(path, start=0, end=limit + 1)
        _check_size(path, len(data), limit)  # it grew, or its size was not what was said
        return data

    @staticmethod
    def _replace_atomically(path: str, fill: Callable[[str], None]) -> None:
        """``fill`` a temporary file beside ``path``, then rename it into place."""
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            fill(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = self._path(uri)
        if not self.is_local:
            with self._naming(uri):
                self.fs.pipe_file(path, data)
            return

        def fill(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())

        self._replace_atomically(path, fill)

    def put_file(self, local: str | Path, uri: str) -> None:
        """Store a (possibly large) local file at ``uri`` without reading it into memory."""
        path = self._path(uri)
        if self.is_local:
            self._replace_atomically(path, lambda tmp: shutil.copyfile(local, tmp))
        else:  # an object appears only when its (multipart) upload completes
            with self._naming(uri):
                self.fs.put_file(str(local), path)

    def get_file(self, uri: str, local: str | Path) -> None:
        with self._naming(uri):
            self.fs.get_file(self._path(uri), str(local))

    def list_files(self, uri: str) -> set[str]:
        """Relative paths of all files below ``uri`` (empty when it does not exist)."""
        base = self._path(uri).rstrip("/")
        try:
            with self._naming(uri):
                found = self.fs.find(base)
        except FileNotFoundError:
            return set()
        return {p[len(base) + 1 :] for p in found if p.startswith(base + "/")}

    def fingerprints(self, uri: str = "", limit: int | None = None) -> dict[str, str]:
        """Every file at or below ``uri`` (relative path, or the file's own name -> what
        identifies its content): ``size:sha256`` of a local file (``size:refused`` for one that is
        not regular or is over ``limit`` bytes: it is not read), ``size:etag`` of an object.
        Changes whenever a file is added, removed or rewritten."""
        base = self._path(uri).rstrip("/")
        try:
            with self._naming(uri):
                found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for path, info in found.items():
            rel = path[len(base) + 1 :] if path.startswith(base + "/") else posixpath.basename(path)
            size = int(info.get("size") or 0)
            if not self.is_local:
                etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
                out[rel] = f"{size}:{etag}"
                continue
            try:
                out[rel] = f"{size}:{file_sha256(path, limit)}"
            except Refused:
                out[rel] = f"{size}:refused"
        return out

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        with self._naming(uri):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def read_many(self, uris: list[str]) -> list[bytes | Exception]:
        """Contents of many files, fetched concurrently from object stores. A file that is not
        there or may not be read comes back as its error; other read errors are tried again
        (``READ_ATTEMPTS``) and then raised."""
        if self.is_local or not uris:
            out: list[bytes | Exception] = []
            for uri in uris:
                try:
                    out.append(self.read_bytes(uri))
                except OSError as exc:
                    if not is_permanent(exc):
                        raise
                    out.append(exc)
            return out
        paths = [self._path(u) for u in uris]
        found: dict[str, Any] = {}
        todo = paths
        for attempt in range(READ_ATTEMPTS):
            found |= self.fs.cat(todo, on_error="return")
            todo = [p for p in todo if p in found and not _settled(found[p])]
            if not todo:
                break
            if attempt + 1 == READ_ATTEMPTS:
                with self._naming(todo[0]):
                    raise found[todo[0]]
            time.sleep(READ_PAUSE * 2**attempt)
        return [
            StorageError(f"{uri}: no such file")
            if isinstance(found.get(path), FileNotFoundError) or path not in found
            else found[path]
            for uri, path in zip(uris, paths, strict=True)
        ]

    def write_many(self, items: dict[str, bytes]) -> None:
        """Write many files; object stores get concurrent single PUTs (each one atomic)."""
        if self.is_local:
            for uri, data in items.items():
                self.write_bytes(uri, data)
        elif items:
            with self._naming(next(iter(items)) if len(items) == 1 else ""):
                self.fs.pipe({self._path(uri): data for uri, data in items.items()})

    @contextlib.contextmanager
    def batched_writes(self, size: int = 64) -> Iterator[Callable[[str, bytes], None]]:
        """``put(uri, data)`` that writes ``size`` files at a time (concurrently on S3)."""
        pending: dict[str, bytes] = {}

        def put(uri: str, data: bytes) -> None:
            pending[uri] = data
            if len(pending) >= size:
                self.write_many(pending)
                pending.clear()

        yield put
        self.write_many(pending)

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_parquet(
        self, uri: str, frame: pd.DataFrame, metadata: dict[str, str] | None = None
    ) -> bytes:
        """Write ``frame`` as Parquet, with optional key-value ``metadata`` in its schema; returns
        the bytes written (for digests)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if metadata:
            extra = {k.encode(): v.encode() for k, v in metadata.items()}
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        # A table with binary columns (the features' parts of cells: float16 arrays, noise to a
        # compressor and nearly all of its bytes) is written plain: compressing and
        # dictionary-encoding 110 MB of them took a quarter of the write, for nothing.
        plain = any(pa.types.is_binary(field.type) for field in table.schema)
        buffer = io.BytesIO()
        pq.write_table(
            table, buffer, **({"compression": "none", "use_dictionary": False} if plain else {})
        )
        data = buffer.getvalue()
        self.write_bytes(uri, data)
        return data

    def read_parquet(self, uri: str) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.read_bytes(uri)), engine="pyarrow")

    @staticmethod
    def parquet_metadata(data: bytes) -> dict[str, str]:
        """The key-value metadata that ``write_parquet`` stored in a file's schema."""
        import pyarrow.parquet as pq

        meta = pq.read_schema(io.BytesIO(data)).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items() if k != b"pandas"}


def _settled(result: Any) -> bool:
    """A read's result that trying again would not change: the bytes, or a permanent error."""
    return not isinstance(result, BaseException) or is_permanent(result)


def _check_size(path: str, size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise Refused(path, f"{size} bytes or more, over the limit of {limit} bytes")


@contextlib.contextmanager
def open_regular(path: str, limit: int | None = None) -> Iterator[io.BufferedReader]:
    """A local file opened for reading if it is a regular file no larger than ``limit`` bytes,
    else ``Refused``. Opened without blocking, so that a FIFO is refused at once instead of
    waiting for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb", closefd=True) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(path, "not a regular file (a FIFO, device or socket)")
        _check_size(path, info.st_size, limit)
        yield handle


def file_sha256(path: str, limit: int | None = None) -> str:
    """sha256 of a local regular file, read in chunks (``Refused`` for anything else, or for a
    file over ``limit`` bytes)."""
    import hashlib

    digest = hashlib.sha256()
    with open_regular(path, limit) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
