"""A mailer that keeps what would have been sent, so tests can follow the links."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sent:
    kind: str
    to: str
    token: str | None = None


@dataclass
class RecordingMailer:
    sent: list[Sent] = field(default_factory=list)

    async def send_verification(self, email: str, token: str) -> None:
        self.sent.append(Sent("verification", email, token))

    async def send_password_reset(self, email: str, token: str) -> None:
        self.sent.append(Sent("password_reset", email, token))

    async def send_password_changed(self, email: str) -> None:
        self.sent.append(Sent("password_changed", email))

    def last(self, kind: str, to: str | None = None) -> Sent:
        for message in reversed(self.sent):
            if message.kind == kind and (to is None or message.to == to):
                return message
        raise AssertionError(f"no {kind} e-mail to {to}")
