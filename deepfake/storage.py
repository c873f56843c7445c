"""One storage layer over fsspec URLs: a local folder or ``s3://bucket/prefix``.

Every write is atomic: a local file is written under a temporary name in the same folder and
renamed into place; an object store gets one PUT. A reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem


class StorageError(OSError):
    """A storage location that cannot be read or written."""


class Storage:
    """Files under one root URL; methods take paths relative to the root, or absolute URLs."""

    def __init__(self, root: str | Path, **storage_options: Any) -> None:
        root = str(root)
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        self.fs, self._root_path = fsspec.core.url_to_fs(root, **storage_options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

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

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self._path(uri))

    def read_bytes(self, uri: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(uri))
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = self._path(uri)
        if self.is_local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            self.fs.pipe_file(path, data)

    def put_file(self, local: str | Path, uri: str) -> None:
        """Store a (possibly large) local file at ``uri`` without reading it into memory."""
        path = self._path(uri)
        if self.is_local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                shutil.copyfile(local, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:  # an object appears only when its (multipart) upload completes
            self.fs.put_file(str(local), path)

    def get_file(self, uri: str, local: str | Path) -> None:
        self.fs.get_file(self._path(uri), str(local))

    def list_files(self, uri: str) -> set[str]:
        """Relative paths of all files below ``uri`` (empty when it does not exist)."""
        base = self._path(uri).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return set()
        return {p[len(base) + 1 :] for p in found if p.startswith(base + "/")}

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_parquet(self, uri: str, frame: pd.DataFrame) -> bytes:
        """Write ``frame`` as Parquet; returns the bytes written (for digests)."""
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, engine="pyarrow")
        data = buffer.getvalue()
        self.write_bytes(uri, data)
        return data

    def read_parquet(self, uri: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read_bytes(uri)), engine="pyarrow")

    def copy_tree(self, src: str, dst: str) -> None:
        """Copy every file below ``src`` to ``dst`` (each file written atomically)."""
        for rel in sorted(self.list_files(src)):
            self.write_bytes(posixpath.join(dst, rel), self.read_bytes(posixpath.join(src, rel)))
