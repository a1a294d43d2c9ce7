"""Secrets never reach a log line, whatever shape they arrive in."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from keel.config import LogSettings, Settings
from keel.core.logging import REDACTED, configure_logging, redact_mapping, redact_text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl here", "eyJzdWIiOiIxMjMifQ"),
        ("postgresql://keel:hunter2@db:5432/keel", "hunter2"),
        ("/files/1?token=t0p&x=1", "t0p"),
        ("login failed password=hunter2, retry", "hunter2"),
        ("api_key: k-123", "k-123"),
    ],
)
def test_secrets_in_free_text_are_redacted(text: str, secret: str) -> None:
    redacted = redact_text(text)
    assert secret not in redacted
    assert REDACTED in redacted


def test_plain_text_is_left_alone() -> None:
    text = "GET /api/v1/items returned 200 in 3 ms"
    assert redact_text(text) == text


def test_secret_keys_are_redacted_at_any_depth() -> None:
    values = {
        "password": "hunter2",
        "headers": {"Authorization": "Basic Zm9v", "accept": "json"},
        "refresh_token": "r-1",
        "nested": [{"api_key": "k"}],
        "email": "a@example.com",
    }
    redacted = redact_mapping(values)
    assert redacted["password"] == REDACTED
    assert redacted["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert redacted["refresh_token"] == REDACTED
    assert redacted["nested"] == [{"api_key": REDACTED}]
    assert redacted["email"] == "a@example.com"


def _settings(log_format: str) -> Settings:
    return Settings(_env_file=None, env="test", log=LogSettings(format=log_format))  # type: ignore[arg-type]


def test_json_lines_in_production_style(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(_settings("json"))
    structlog.get_logger("t").info("signed_in", user="u1", password="hunter2")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "signed_in"
    assert line["user"] == "u1"
    assert line["password"] == REDACTED
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


@pytest.mark.parametrize("style", ["json", "console"])
def test_tracebacks_leave_out_local_variables(
    style: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(_settings(style))

    def fail(credentials: tuple[str, str]) -> None:
        raise ValueError("could not sign in")

    try:
        fail(("ann", "pl41n-" + "p4ssphrase"))
    except ValueError:
        structlog.get_logger("t").exception("sign_in_failed")
    out = capsys.readouterr().out
    assert "could not sign in" in out
    assert "pl41n-p4ssphrase" not in out


def test_readable_lines_in_development(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(_settings("console"))
    structlog.get_logger("t").warning("disk_low", token="abc")
    out = capsys.readouterr().out
    assert "disk_low" in out
    assert "abc" not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.strip().splitlines()[-1])


def test_standard_library_records_share_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(_settings("json"))
    structlog.contextvars.bind_contextvars(request_id="rid-1")
    try:
        logging.getLogger("uvicorn.error").warning("connecting to redis://:pw@cache:6379")
    finally:
        structlog.contextvars.clear_contextvars()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["request_id"] == "rid-1"
    assert "pw@" not in line["event"]
    assert line["level"] == "warning"
