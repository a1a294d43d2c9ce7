"""E-mail: a message type, templates, and the backends that deliver (console, SMTP)."""

from keel.core.mail.backends import ConsoleBackend, MailBackend, SmtpBackend, create_backend
from keel.core.mail.message import Message, to_email_message
from keel.core.mail.render import render

__all__ = [
    "ConsoleBackend",
    "MailBackend",
    "Message",
    "SmtpBackend",
    "create_backend",
    "render",
    "to_email_message",
]
