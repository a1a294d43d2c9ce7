"""A mail backend that keeps what would have been sent, so tests can follow the links."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from fastapi import FastAPI

from keel.core.jobs.inprocess import InProcessRunner
from keel.core.mail import Message

_TOKEN_IN_LINK = re.compile(r"[?&]token=([^\s&\"<]+)")


def token_in(text: str) -> str | None:
    """The token of the first link in `text` that carries one."""
    match = _TOKEN_IN_LINK.search(text)
    return unquote(match.group(1)) if match else None


@dataclass(frozen=True)
class Sent:
    kind: str  # the template: welcome, verify_email, reset_password, password_changed
    to: str
    token: str | None
    message: Message


@dataclass
class Mailbox:
    messages: list[Message] = field(default_factory=list)

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def sent(self) -> list[Sent]:
        return [
            Sent(message.kind, message.to, token_in(message.text), message)
            for message in self.messages
        ]

    def clear(self) -> None:
        self.messages.clear()

    def last(self, kind: str, to: str | None = None) -> Sent:
        for sent in reversed(self.sent):
            if sent.kind == kind and (to is None or sent.to == to):
                return sent
        raise AssertionError(f"no {kind} e-mail to {to}: {[(s.kind, s.to) for s in self.sent]}")


def install_mailbox(app: FastAPI) -> Mailbox:
    """Have the app's in-process jobs deliver into a new Mailbox (the app is running)."""
    runner = app.state.resources.jobs
    assert isinstance(runner, InProcessRunner), "the mailbox needs the in-process runner"
    mailbox = Mailbox()
    runner.context = dataclasses.replace(runner.context, mail=mailbox)
    return mailbox
