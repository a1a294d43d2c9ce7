"""One e-mail as the app composes it, and its MIME form (text, then HTML)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid


@dataclass(frozen=True, slots=True)
class Message:
    to: str
    subject: str
    text: str
    html: str
    # The template it came from ("welcome", "reset_password"...): for logs and tests.
    kind: str = ""


def to_email_message(message: Message, sender: str) -> EmailMessage:
    """multipart/alternative: readers show the last part they understand, so HTML last."""
    mime = EmailMessage()
    mime["From"] = sender
    mime["To"] = message.to
    mime["Subject"] = message.subject
    mime["Date"] = formatdate(localtime=False, usegmt=True)
    mime["Message-ID"] = make_msgid(domain=_domain_of(sender))
    mime.set_content(message.text)
    mime.add_alternative(message.html, subtype="html")
    return mime


def _domain_of(address: str) -> str:
    domain = address.rsplit("@", 1)[-1].strip(" >")
    return domain or "localhost"
