"""E-mail: templates, the console and SMTP backends, and the verification link end to end."""

from __future__ import annotations

import email
import ssl
import stat
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiosmtplib
import httpx
import pytest

from keel.auth.mailer import TemplatedMailer
from keel.config import Settings
from keel.core.mail import (
    ConsoleBackend,
    Message,
    SmtpBackend,
    create_backend,
    render,
    to_email_message,
)
from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.factories.users import DEFAULT_PASSWORD, unique_email
from tests.support.apps import client_for
from tests.support.servers import HOST
from tests.support.smtp import Inbox, running_smtp_server, self_signed_certificate

pytestmark = pytest.mark.anyio

TOKEN = "tok_SECRET-value_123"


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text and HTML bodies of a multipart/alternative message."""
    assert message.get_content_type() == "multipart/alternative"
    text, html = list(message.iter_parts())
    assert isinstance(text, EmailMessage)
    assert isinstance(html, EmailMessage)
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    return str(text.get_content()), str(html.get_content())


def token_from(body: str) -> str:
    for word in body.split():
        if "?token=" in word:
            return parse_qs(urlsplit(word.strip('"<>')).query)["token"][0]
    raise AssertionError("no link with a token")


# Rendering.


@pytest.mark.parametrize(
    ("name", "context"),
    [
        ("verify_email", {"link": "https://x/verify-email?token=t", "hours": 48}),
        ("reset_password", {"link": "https://x/reset-password?token=t", "minutes": 60}),
        ("password_changed", {}),
        ("welcome", {"link": "https://x/verify-email?token=t", "hours": 48}),
    ],
)
def test_every_template_renders_both_parts(name: str, context: dict[str, Any]) -> None:
    message = render(name, "ann@example.com", email="ann@example.com", **context)
    assert message.subject
    assert "\n" not in message.subject
    assert "ann@example.com" in message.text
    assert "ann@example.com" in message.html
    assert message.html.lstrip().startswith("<!doctype html>")
    for value in context.values():
        assert str(value) in message.text


def test_welcome_without_a_link_asks_for_no_verification() -> None:
    # Accounts created verified (by an admin) get the welcome alone.
    message = render("welcome", "ann@example.com", email="ann@example.com", link=None, hours=48)
    assert "ann@example.com" in message.text
    assert "http" not in message.text
    assert "href" not in message.html.split("<body", 1)[-1]


def test_html_part_escapes_and_text_part_does_not() -> None:
    hostile = "<script>x</script>@example.com"
    message = render("password_changed", hostile, email=hostile)
    assert "<script>" not in message.html
    assert "&lt;script&gt;" in message.html
    assert hostile in message.text


def test_mime_form_is_text_then_html() -> None:
    message = Message(to="ann@example.com", subject="Hi", text="plain", html="<p>rich</p>")
    mime = parse(to_email_message(message, "Keel <no-reply@keel.test>").as_bytes())
    assert mime["To"] == "ann@example.com"
    assert mime["From"] == "Keel <no-reply@keel.test>"
    assert mime["Subject"] == "Hi"
    assert "@keel.test>" in mime["Message-ID"]
    text, html = parts(mime)
    assert text.strip() == "plain"
    assert html.strip() == "<p>rich</p>"


def test_links_stay_whole_in_the_raw_message() -> None:
    link = "https://app.example.com/verify-email?token=" + "x" * 120
    message = render("verify_email", "ann@example.com", email="ann@example.com", link=link, hours=1)
    raw = to_email_message(message, "Keel <no-reply@keel.test>").as_bytes()
    # Searchable as is (no quoted-printable line breaks or =3D), in both parts.
    assert raw.count(link.encode()) == 2


def test_non_ascii_text_is_encoded_and_comes_back() -> None:
    text = "Grüße, Zoë: " + "ü" * 1200
    message = Message(to="zoe@example.com", subject="Grüße", text=text, html=f"<p>{text}</p>")
    raw = to_email_message(message, "Keel <no-reply@keel.test>").as_bytes()
    assert raw.isascii()
    mime = parse(raw)
    assert mime["Subject"] == "Grüße"
    assert parts(mime)[0].strip() == text


# The console backend.


async def test_console_backend_writes_a_private_eml_with_the_link(
    make_settings: SettingsFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(data_dir=tmp_path, public_base_url="https://app.example/")
    backend = create_backend(settings)
    assert isinstance(backend, ConsoleBackend)
    capsys.readouterr()

    await TemplatedMailer(backend, settings).send_verification("ann@example.com", TOKEN)

    files = list((tmp_path / "mail").iterdir())
    assert len(files) == 1
    assert files[0].suffix == ".eml"
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    mime = parse(files[0].read_bytes())
    assert mime["To"] == "ann@example.com"
    link = f"https://app.example/verify-email?token={TOKEN}"
    text, html = parts(mime)
    assert link in text
    assert f'href="{link}"' in html
    assert token_from(text) == TOKEN

    logged = capsys.readouterr().out
    assert TOKEN not in logged
    lines = [line for line in logged.splitlines() if "mail_written" in line]
    assert len(lines) == 1
    assert "ann@example.com" in lines[0]
    assert files[0].name in lines[0]


async def test_reset_and_changed_mails_use_their_pages(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(data_dir=tmp_path, public_base_url="https://app.example")
    mailer = TemplatedMailer(ConsoleBackend(tmp_path), settings)
    await mailer.send_password_reset("ann@example.com", TOKEN)
    await mailer.send_password_changed("ann@example.com")
    bodies = [parts(parse(path.read_bytes()))[0] for path in (tmp_path / "mail").glob("*.eml")]
    assert len(bodies) == 2
    assert any(f"https://app.example/reset-password?token={TOKEN}" in body for body in bodies)
    assert any("was just changed" in body for body in bodies)


async def test_a_failed_delivery_raises_so_the_job_is_retried(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    settings = make_settings(data_dir=blocked)
    mailer = TemplatedMailer(create_backend(settings), settings)
    with pytest.raises(OSError, match="Not a directory"):
        await mailer.send_password_reset("ann@example.com", TOKEN)


# The SMTP backend, against a real SMTP server.


def smtp_settings(make_settings: SettingsFactory, port: int, **mail: Any) -> Settings:
    values = {
        "backend": "smtp",
        "from": "Keel <no-reply@keel.test>",
        "smtp_host": HOST,
        "smtp_port": port,
        "smtp_security": "none",
        "smtp_timeout": 5,
        **mail,
    }
    return make_settings(mail=values)


async def test_smtp_backend_delivers_both_parts(
    make_settings: SettingsFactory, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, port = smtp_server
    settings = smtp_settings(make_settings, port)
    backend = create_backend(settings)
    assert isinstance(backend, SmtpBackend)

    await TemplatedMailer(backend, settings).send_password_reset("ann@example.com", TOKEN)

    assert len(inbox.envelopes) == 1
    envelope = inbox.envelopes[0]
    assert envelope.mail_from == "no-reply@keel.test"
    assert envelope.rcpt_tos == ["ann@example.com"]
    assert inbox.logins == []
    assert isinstance(envelope.content, bytes)
    text, html = parts(parse(envelope.content))
    assert token_from(text) == TOKEN
    assert "reset-password?token=" in html


async def test_smtp_backend_logs_in_when_a_username_is_set(
    make_settings: SettingsFactory, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, port = smtp_server
    settings = smtp_settings(make_settings, port, smtp_username="keel", smtp_password="right")
    await SmtpBackend(settings).send(
        Message(to="ann@example.com", subject="Hi", text="plain", html="<p>rich</p>")
    )
    assert inbox.logins == [(b"keel", b"right")]
    assert len(inbox.envelopes) == 1


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_smtp_backend_encrypts_and_checks_the_certificate(
    make_settings: SettingsFactory, tmp_path: Path, security: str
) -> None:
    certificate = self_signed_certificate(tmp_path)
    with running_smtp_server(security, certificate) as (inbox, port):
        trusting = smtp_settings(
            make_settings,
            port,
            smtp_security=security,
            smtp_ca_file=certificate[0],
            smtp_username="keel",
            smtp_password="right",
        )
        await TemplatedMailer(create_backend(trusting), trusting).send_password_reset(
            "ann@example.com", TOKEN
        )
        assert len(inbox.envelopes) == 1
        assert inbox.logins == [(b"keel", b"right")]  # the password crossed encrypted

        # A certificate nobody vouched for is refused, and nothing is sent.
        untrusting = smtp_settings(make_settings, port, smtp_security=security)
        refused = (aiosmtplib.SMTPException, ssl.SSLError)  # by mode, either wraps it
        with pytest.raises(refused, match="CERTIFICATE_VERIFY_FAILED"):
            await create_backend(untrusting).send(
                Message(to="bob@example.com", subject="Hi", text="plain", html="<p>rich</p>")
            )
        assert len(inbox.envelopes) == 1


async def test_a_server_requiring_starttls_refuses_plain_smtp(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    with running_smtp_server("starttls", self_signed_certificate(tmp_path)) as (inbox, port):
        plain = smtp_settings(make_settings, port, smtp_security="none")
        with pytest.raises(aiosmtplib.SMTPException):
            await create_backend(plain).send(
                Message(to="bob@example.com", subject="Hi", text="plain", html="<p>rich</p>")
            )
        assert inbox.envelopes == []


# End to end: the console backend of a real app, read like a developer would.


async def test_registration_mail_verifies_the_account(
    make_settings: SettingsFactory,
    migrated_database: str,
    client: httpx.AsyncClient,  # empties the tables after the test
    tmp_path: Path,
) -> None:
    app = create_app(make_settings(data_dir=tmp_path))
    address = unique_email()
    async with client_for(app) as http:
        response = await http.post(
            "/api/v1/auth/register", json={"email": address, "password": DEFAULT_PASSWORD}
        )
        assert response.status_code == 201, response.text
        files = list((tmp_path / "mail").glob("*.eml"))
        assert len(files) == 1
        mime = parse(files[0].read_bytes())
        assert mime["To"] == address
        token = token_from(parts(mime)[0])

        response = await http.post("/api/v1/auth/verify-email", json={"token": token})
        assert response.status_code == 204, response.text
        response = await http.post("/api/v1/auth/verify-email", json={"token": token})
        assert response.status_code == 400
