from __future__ import annotations

import logging

from deepfake.secrets import MASK, redact, redact_logs


def test_log_records_never_carry_a_credential(monkeypatch, caplog) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-991")
    monkeypatch.setenv("KAGGLE_KEY", "kaggle-key-1234")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "abc")  # too short to mask: would hide ordinary text
    redact_logs()
    redact_logs()  # idempotent
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("some.library")
    log.debug("headers: %s", {"Authorization": "key=s3cr3t-value-991"})
    try:
        raise RuntimeError("login failed for kaggle-key-1234")
    except RuntimeError:
        log.exception("download failed")
    assert "s3cr3t-value-991" not in caplog.text and "kaggle-key-1234" not in caplog.text
    assert f"key={MASK}" in caplog.text and f"login failed for {MASK}" in caplog.text
    assert "abc" in redact("abc stays")
