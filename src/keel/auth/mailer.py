"""The e-mails sign-in sends, composed from templates (sent by the jobs in auth/jobs.py).

The links point at the front end, built on `KEEL_PUBLIC_BASE_URL`:

- `{public_base_url}/verify-email?token=…` and
- `{public_base_url}/reset-password?token=…`

are the front end's pages, which read the token from the address and POST it to the API
(`/api/v1/auth/verify-email`, `/api/v1/auth/reset-password`); the API serves no HTML.
Registration sends one welcome message carrying the verification link, so a new user
gets one e-mail, not two. A failure to deliver raises, so the job is retried.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from keel.config import Settings
from keel.core.mail import MailBackend, render


class TemplatedMailer:
    def __init__(self, backend: MailBackend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings

    def link(self, page: str, token: str) -> str:
        return f"{self.settings.public_base_url}/{page}?{urlencode({'token': token})}"

    async def send_welcome(self, email: str, token: str | None) -> None:
        await self._send(
            "welcome",
            email,
            link=self.link("verify-email", token) if token else None,
            hours=self.settings.auth.verify_email_ttl_hours,
        )

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
        await self.backend.send(render(template, email, email=email, **context))
