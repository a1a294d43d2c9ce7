"""A real SMTP server (aiosmtpd) for tests, on a free port, keeping what it receives."""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.servers import HOST, free_port


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"right")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files: (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keel-test-smtp")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = folder / "smtp-cert.pem"
    key_path = folder / "smtp-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def running_smtp_server(
    security: str = "none", certificate: tuple[Path, Path] | None = None
) -> Iterator[tuple[Inbox, int]]:
    """An aiosmtpd server on a free port: its inbox and port. LOGIN is accepted with
    the password `right`. security: `none`, `starttls` (required before MAIL) or `tls`
    (implicit), with `certificate` from self_signed_certificate()."""
    inbox = Inbox()
    port = free_port()
    options: dict[str, Any] = {"auth_require_tls": False}
    if security != "none":
        assert certificate is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        if security == "starttls":
            options = {"tls_context": context, "require_starttls": True}
        else:
            options = {"ssl_context": context, "auth_require_tls": False}
    controller = Controller(
        inbox, hostname=HOST, port=port, authenticator=inbox.authenticate, **options
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def parsed(envelope: Envelope) -> EmailMessage:
    assert isinstance(envelope.content, bytes)
    message = message_from_bytes(envelope.content, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content: str = part.get_content()
    return content


async def wait_for_mail(inbox: Inbox, to: str, subject: str, timeout: float = 30) -> EmailMessage:
    """The first message to `to` whose subject contains `subject`, once it has arrived."""
    deadline = time.monotonic() + timeout
    while True:
        for envelope in list(inbox.envelopes):
            message = parsed(envelope)
            if envelope.rcpt_tos == [to] and subject in str(message["Subject"]):
                return message
        if time.monotonic() > deadline:
            seen = [(e.rcpt_tos, str(parsed(e)["Subject"])) for e in inbox.envelopes]
            pytest.fail(f"no e-mail to {to} about {subject!r} in {timeout} s; got {seen}")
        await anyio.sleep(0.05)
