"""Keeping credentials out of logs.

The pipeline never logs a credential itself, but libraries below it may: botocore's debug log
prints the request headers, access key id included. ``redact_logs`` makes every log record of
the process (ours, Prefect's, botocore's, at any level, tracebacks too) replace the value of
every credential with ``***`` before any handler sees it, so nothing reaches a console, a file
or the Prefect API. The credentials are the values of the credential environment variables (the
Prefect API's auth string and its password part among them) and the keys in the credential files
the libraries read by themselves: AWS's shared credentials file, Kaggle's ``kaggle.json`` and
``access_token``, Hugging Face's token file.
"""

from __future__ import annotations

import configparser
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_TOKEN",
    "HF_TOKEN",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_SERVER_DATABASE_PASSWORD",
    "PREFECT_API_DATABASE_PASSWORD",
)
MASK = "***"


def _credential_files() -> list[tuple[Path, str]]:
    """(path, format) of the credential files the libraries read by themselves."""
    home = Path.home()
    kaggle = Path(os.environ.get("KAGGLE_CONFIG_DIR") or home / ".kaggle")
    hf_home = Path(os.environ.get("HF_HOME") or home / ".cache" / "huggingface")
    aws = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"
    return [(Path(aws), "ini"), (kaggle / "kaggle.json", "json"),
            (kaggle / "access_token", "text"), (hf_home / "token", "text")]  # fmt: skip


@functools.lru_cache(maxsize=8)
def _keys_in(path: Path, kind: str, stamp: tuple[int, int]) -> tuple[str, ...]:
    """The secret values in one credential file (its modification stamp keys the cache)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return ()
    if kind == "json":
        try:
            return tuple(str(v) for k, v in json.loads(text).items() if k in ("key", "username"))
        except (ValueError, AttributeError):
            return ()
    if kind == "ini":
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text)
        except configparser.Error:
            return ()
        keys = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
        return tuple(
            value for section in parser.sections() for key, value in parser[section].items()
            if key in keys
        )  # fmt: skip
    return (text.strip(),)


def _file_credentials() -> list[str]:
    found = []
    for path, kind in _credential_files():
        try:
            info = path.stat()
        except OSError:
            continue
        found += _keys_in(path, kind, (info.st_mtime_ns, info.st_size))
    return found


def credentials() -> list[str]:
    """The credential values set now, from the environment and the credential files; an auth
    string's password part too (short values are skipped: they would mask ordinary text)."""
    found = [os.environ.get(name, "") for name in CREDENTIAL_VARIABLES] + _file_credentials()
    found += [value.partition(":")[2] for value in found if ":" in value]  # user:password
    return sorted({value for value in found if len(value) >= 6}, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    for secret in credentials() if secrets is None else secrets:
        text = text.replace(secret, MASK)
    return text


def redact_logs() -> None:
    """Install the redacting log-record factory (once per process)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_credentials", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        secrets = credentials()
        if not secrets:
            return record
        message = record.getMessage()
        if any(secret in message for secret in secrets):
            record.msg, record.args = redact(message, secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
        return record

    factory.redacts_credentials = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
