"""The e-mails sign-in sends, behind one interface.

The links point at the front end, built on `KEEL_PUBLIC_BASE_URL`:

- `{public_base_url}/verify-email?token=…` and
- `{public_base_url}/reset-password?token=…`

are the front end's pages, which read the token from the address and POST it to the API
(`/api/v1/auth/verify-email`, `/api/v1/auth/reset-password`); the API serves no HTML.
Registration sends one message that both welcomes and asks for verification, so a new
user gets one e-mail, not two.

Sending happens after the commit (never for a change that did not happen); a failure
to deliver is logged, not raised, as the request it follows has already succeeded.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlencode

import structlog

from keel.config import Settings
from keel.core.mail import MailBackend, render

log = structlog.get_logger("keel.mail")


class AccountMailer(Protocol):
    async def send_verification(self, email: str, token: str) -> None: ...
    async def send_password_reset(self, email: str, token: str) -> None: ...
    async def send_password_changed(self, email: str) -> None: ...


class TemplatedMailer:
    def __init__(self, backend: MailBackend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings

    def link(self, page: str, token: str) -> str:
        return f"{self.settings.public_base_url}/{page}?{urlencode({'token': token})}"

    async def send_verification(self, email: str, token: str) -> None:
        await self._send(
            "verify_email",
            email,
            link=self.link("verify-email", token),
            hours=self.settings.auth.verify_email_ttl_hours,
        )

    async def send_password_reset(self, email: str, token: str) -> None:
        await self._send(
            "reset_password",
            email,
            link=self.link("reset-password", token),
            minutes=self.settings.auth.reset_password_ttl_minutes,
        )

    async def send_password_changed(self, email: str) -> None:
        await self._send("password_changed", email)

    async def _send(self, template: str, email: str, **context: Any) -> None:
        message = render(template, email, email=email, **context)
        try:
            await self.backend.send(message)
        except Exception:
            log.exception("mail_failed", kind=template, to=email)
