"""Messages from the templates in templates/: `<name>.subject.txt`, `.txt`, `.html`.

HTML is autoescaped; the text part and the subject are not (they are not HTML).
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from keel.core.mail.message import Message

_env = Environment(
    loader=PackageLoader("keel.core.mail", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def render(name: str, to: str, **context: Any) -> Message:
    subject = _env.get_template(f"{name}.subject.txt").render(**context)
    return Message(
        to=to,
        subject=" ".join(subject.split()),
        text=_env.get_template(f"{name}.txt").render(**context),
        html=_env.get_template(f"{name}.html").render(**context),
        kind=name,
    )
