"""The e-mails sign-in sends, behind one interface.

Delivery (templates, SMTP, the development mailbox) belongs to the jobs-and-mail issue;
until then the default only records in the log that a message was due, without the
token it would carry.
"""

from __future__ import annotations

from typing import Protocol

import structlog

log = structlog.get_logger("keel.mail")


class AccountMailer(Protocol):
    async def send_verification(self, email: str, token: str) -> None: ...
    async def send_password_reset(self, email: str, token: str) -> None: ...
    async def send_password_changed(self, email: str) -> None: ...


class LogOnlyMailer:
    async def send_verification(self, email: str, token: str) -> None:
        log.info("mail_due", kind="verification", to=email)

    async def send_password_reset(self, email: str, token: str) -> None:
        log.info("mail_due", kind="password_reset", to=email)

    async def send_password_changed(self, email: str) -> None:
        log.info("mail_due", kind="password_changed", to=email)
