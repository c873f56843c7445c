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


def test_the_prefect_auth_string_and_keys_in_credential_files_are_redacted(
    monkeypatch, tmp_path, caplog
) -> None:
    aws = tmp_path / "aws-credentials"
    aws.write_text("[default]\naws_access_key_id = AKIAFROMAFILE0001\n"
                   "aws_secret_access_key = secret-from-the-file-42\n")  # fmt: skip
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "kaggle.json").write_text('{"username": "someone", "key": "kaggle-file-key-77"}')
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(kaggle))
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:prefect-pass-1234")
    redact_logs()
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("some.library")
    log.debug("auth %s, basic %s", "admin:prefect-pass-1234", "prefect-pass-1234")
    log.debug("aws %s %s, kaggle %s", "AKIAFROMAFILE0001", "secret-from-the-file-42",
              "kaggle-file-key-77")  # fmt: skip
    for secret in ("prefect-pass-1234", "AKIAFROMAFILE0001", "secret-from-the-file-42",
                   "kaggle-file-key-77"):  # fmt: skip
        assert secret not in caplog.text, secret
    aws.write_text("[default]\naws_secret_access_key = rotated-secret-9876\n")  # read again
    log.debug("now %s", "rotated-secret-9876")
    assert "rotated-secret-9876" not in caplog.text
