"""Where messages go: the console backend (development) or an SMTP server.

The console backend logs one line per message (recipient, subject, file; never the body,
which carries tokens) and writes the whole message as an `.eml` file under
`<data_dir>/mail/`, which any mail reader opens, links included.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Protocol

import aiosmtplib
import structlog

from keel.config import Settings
from keel.core.mail.message import Message, to_email_message

log = structlog.get_logger("keel.mail")


class MailBackend(Protocol):
    async def send(self, message: Message) -> None: ...


class ConsoleBackend:
    def __init__(self, data_dir: Path, sender: str = "Keel <no-reply@localhost>") -> None:
        self.folder = data_dir / "mail"
        self.sender = sender

    async def send(self, message: Message) -> None:
        data = to_email_message(message, self.sender).as_bytes()
        path = await asyncio.to_thread(self._write, data)
        log.info("mail_written", to=message.to, subject=message.subject, path=str(path))

    def _write(self, data: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{stamp}-{secrets.token_hex(6)}.eml"
        path = self.folder / name
        tmp = self.folder / f".{name}.tmp"
        # Owner-only from the start: the file holds tokens that sign someone in.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


class SmtpBackend:
    def __init__(self, settings: Settings) -> None:
        self.mail = settings.mail

    async def send(self, message: Message) -> None:
        mail = self.mail
        password = mail.smtp_password.get_secret_value() if mail.smtp_password else None
        await aiosmtplib.send(
            to_email_message(message, mail.sender),
            hostname=mail.smtp_host,
            port=mail.smtp_port,
            username=mail.smtp_username or None,
            password=password if mail.smtp_username else None,
            use_tls=mail.smtp_security == "tls",
            start_tls=mail.smtp_security == "starttls",
            timeout=mail.smtp_timeout,
            cert_bundle=str(mail.smtp_ca_file) if mail.smtp_ca_file else None,
        )
        log.info("mail_sent", to=message.to, subject=message.subject)


def create_backend(settings: Settings) -> MailBackend:
    if settings.mail.backend == "smtp":
        return SmtpBackend(settings)
    return ConsoleBackend(settings.data_dir, settings.mail.sender)
