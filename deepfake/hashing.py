"""Digests: of settings and records (names of stage folders, plans, parts), of file contents, and
the per-record seeds derived from them. Plain hashlib and json: importing this costs nothing."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest_of(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj``."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()


def sha256(data: bytes) -> str:
    """sha256 of bytes, as hex."""
    return hashlib.sha256(data).hexdigest()


def seed_of(text: str, nbytes: int) -> int:
    """A reproducible integer seed from ``text`` (the first ``nbytes`` of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:nbytes], "little")
