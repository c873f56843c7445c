"""Keeping credentials out of logs.

The pipeline never logs a credential itself, but libraries below it may: botocore's debug log
prints the request headers, access key id included. ``redact_logs`` makes every log record of
the process (ours, Prefect's, botocore's, at any level, tracebacks too) replace the value of
every credential environment variable with ``***`` before any handler sees it, so nothing
reaches a console, a file or the Prefect API.
"""

from __future__ import annotations

import logging
import os
from typing import Any

CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_TOKEN",
    "HF_TOKEN",
)
MASK = "***"


def credentials() -> list[str]:
    """The credential values set now (short values are skipped: they would mask ordinary text)."""
    found = (os.environ.get(name, "") for name in CREDENTIAL_VARIABLES)
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
