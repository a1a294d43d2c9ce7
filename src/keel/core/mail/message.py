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
    mime.set_content(message.text, cte=_transfer_encoding(message.text))
    mime.add_alternative(message.html, subtype="html", cte=_transfer_encoding(message.html))
    return mime


def _transfer_encoding(text: str) -> str | None:
    """7bit when the text allows it (ASCII, lines within SMTP's 998 octets): links stay
    whole and readable in the raw message (`grep token= data/mail/*.eml`). Otherwise
    None: the library's choice, quoted-printable or base64."""
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return "7bit"
    return None


def _domain_of(address: str) -> str:
    domain = address.rsplit("@", 1)[-1].strip(" >")
    return domain or "localhost"
