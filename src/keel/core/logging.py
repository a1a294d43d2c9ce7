"""Structured logs: JSON lines in production, readable lines in development.

Keel's own loggers write through structlog straight to stdout (the access line is on
the hot path); the standard library's loggers (Uvicorn, SQLAlchemy, Alembic) are
formatted by the same processors, so every line has one shape and the request id.
Secrets are redacted in a processor that every line passes through.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from keel.config import Settings
from keel.core.request_context import current_request_id

REDACTED = "[REDACTED]"

# Keys whose values are secrets wherever they appear, at any depth.
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|authorization|api[-_]?key|cookie|credential|private[-_]?key"
    r"|signature",
    re.IGNORECASE,
)
# Secrets that hide inside free text: bearer credentials, JWTs, URL passwords.
_SECRET_IN_TEXT = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(?i)(\w+://[^:/@\s]*:)[^@\s]+@"), r"\1" + REDACTED + "@"),
    (
        re.compile(r"(?i)([?&](?:[a-z_]*token|password|secret|signature|key)=)[^&\s]+"),
        r"\1" + REDACTED,
    ),
    (
        re.compile(
            r"(?i)\b((?:pass(?:word|wd)?|secret|[a-z_]*token|api[-_]?key)\s*[=:]\s*)[^\s,;&]+"
        ),
        r"\1" + REDACTED,
    ),
)


# One cheap search that every secret pattern above would also hit: most values (paths,
# methods, addresses) fail it at once and skip the substitutions. This keeps redaction
# affordable on the access line, which every request writes.
_MIGHT_HOLD_SECRET = re.compile(r"(?i)bearer|basic|eyJ|://|token|pass|secret|signature|key")

# Values Keel itself writes in a known, secret-free shape.
_SAFE_KEYS = frozenset(
    {"level", "timestamp", "request_id", "method", "status", "duration_ms", "bytes", "logger"}
)


def redact_text(text: str) -> str:
    if not _MIGHT_HOLD_SECRET.search(text):
        return text
    for pattern, replacement in _SECRET_IN_TEXT:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _redact_value(key: str | None, value: Any) -> Any:
    if key is not None and value is not None and _is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(None, item) for item in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if key in _SAFE_KEYS or isinstance(value, int | float | bool):
            continue
        # The event name itself is a fixed string chosen by the code, but may be a
        # formatted message from a library: redact its text, keep the key.
        event_dict[key] = _redact_value(None if key == "event" else key, value)
    return event_dict


def add_request_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """The id of the request being served, on every line written while serving it."""
    request_id = current_request_id()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # Uvicorn adds a copy of each message with terminal colour codes in it.
    event_dict.pop("color_message", None)
    return event_dict


def _orjson_dumps(value: Any, **_kwargs: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(as_json: bool) -> Processor:
    if as_json:
        return structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    return structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())


# Tracebacks as data, without each frame's local variables: their reprs would carry
# passwords and tokens in free text, past any key-based redaction.
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelNamesMapping()[settings.log.level]
    as_json = settings.log_as_json
    # Tracebacks are rendered to text (or dicts) before redaction, so a secret in an
    # exception message is redacted too.
    tail: list[Processor] = [
        drop_color_message,
        _DICT_TRACEBACKS if as_json else structlog.processors.format_exc_info,
        redact_secrets,
        _renderer(as_json),
    ]

    structlog.configure(
        processors=[*_shared_processors(), structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(),
        # Tests reconfigure logging per app; a served process configures it once.
        cache_logger_on_first_use=settings.env != "test",
    )

    # The standard library's records go through the same processors.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    # Keel writes its own access line; Uvicorn's would be a second, poorer one.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Alembic narrates every context it opens (readiness checks open one each time).
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    # At DEBUG, aiosqlite logs every statement with its parameters (password and token
    # hashes among them), past the redaction: its DEBUG lines never pass.
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))


def redact_mapping(values: MutableMapping[str, Any]) -> dict[str, Any]:
    """Redacted copy of a mapping, for logging arguments that may hold secrets."""
    return {key: _redact_value(key, value) for key, value in values.items()}
