"""A real SMTP server (aiosmtpd) for tests, on a free port, keeping what it receives."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import anyio
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

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


@contextlib.contextmanager
def running_smtp_server() -> Iterator[tuple[Inbox, int]]:
    """An aiosmtpd server on a free port (plain SMTP, LOGIN accepted with password
    `right`): its inbox and port."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname=HOST,
        port=port,
        authenticator=inbox.authenticate,
        auth_require_tls=False,
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
    content: str = part.get_content()  # type: ignore[attr-defined]
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
