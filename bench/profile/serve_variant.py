"""Serve Keel's app with parts removed, to measure what each part costs (bench/profile).

    .venv/bin/python bench/profile/serve_variant.py PORT VARIANT

VARIANT is `full` or parts to take away joined by `+`:
  noredact     the secret-redaction log processor
  noaccesslog  the access line (ObservabilityMiddleware(log_requests=False))
  noobs nosec nogzip nobody nounhandled   one middleware each; nomw: all of Keel's
  shortcut     GET /health answered by a plain ASGI function in front of FastAPI
               (Keel's headers and a request id, no metrics, no log)
  shortcutobs  the same inside ObservabilityMiddleware without its access line
  shortcutlog  the same inside ObservabilityMiddleware with its access line
An experiment, not a part of Keel: it reaches into the app's middleware list.
"""

import sys
import uuid

import structlog
import uvicorn

from keel.config import Settings
from keel.core import logging as keel_logging
from keel.core.metrics import Metrics
from keel.core.middleware.observability import ObservabilityMiddleware
from keel.core.middleware.security_headers import API_CSP
from keel.main import create_app

port, variant = int(sys.argv[1]), sys.argv[2]
app = create_app(Settings())
drop = set() if variant == "full" else set(variant.split("+"))


def name(middleware):
    return middleware.cls.__name__


if "noredact" in drop:
    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[p for p in processors if p is not keel_logging.redact_secrets])
if "noaccesslog" in drop:
    for m in app.user_middleware:
        if name(m) == "ObservabilityMiddleware":
            m.kwargs["log_requests"] = False
REMOVABLE = {
    "noobs": "ObservabilityMiddleware",
    "nosec": "SecurityHeadersMiddleware",
    "nogzip": "GZipMiddleware",
    "nobody": "BodyLimitMiddleware",
    "nounhandled": "UnhandledErrorMiddleware",
}
gone = set(REMOVABLE.values()) if "nomw" in drop else {REMOVABLE[d] for d in drop if d in REMOVABLE}
app.user_middleware[:] = [m for m in app.user_middleware if name(m) not in gone]

served = app
shortcut_kind = next((d for d in ("shortcut", "shortcutobs", "shortcutlog") if d in drop), None)
if shortcut_kind:
    BODY = b'{"status":"ok"}'
    FIXED = [
        (b"content-length", str(len(BODY)).encode()),
        (b"content-type", b"application/json"),
        (b"content-security-policy", API_CSP),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    observed = shortcut_kind != "shortcut"

    async def shortcut(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/health" and scope["method"] == "GET":
            # ObservabilityMiddleware adds the request id itself.
            headers = FIXED if observed else [*FIXED, (b"x-request-id", uuid.uuid4().hex.encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": BODY})
            return
        await app(scope, receive, send)

    served = shortcut
    if observed:
        served = ObservabilityMiddleware(
            shortcut, metrics=Metrics(), log_requests=shortcut_kind == "shortcutlog"
        )

sys.stderr.write(f"variant {variant}, middleware: {[name(m) for m in app.user_middleware]}\n")
uvicorn.run(
    served, host="127.0.0.1", port=port, access_log=False, log_config=None, server_header=False
)
