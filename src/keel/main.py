"""The app factory: settings in, a ready-to-serve FastAPI app out.

Nothing is opened at import time. `create_app` checks the settings, sets up logging and
metrics, and wires middleware, error handlers and routers; its lifespan opens the
database engine, Redis and the broker, and closes them on shutdown.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI

import keel
from keel.api_keys.router import router as api_keys_router
from keel.auth.router import jwks_router
from keel.auth.router import router as auth_router
from keel.auth.service import ensure_first_admin
from keel.config import Settings, check_settings
from keel.core.dispatch import install_relative_slash_redirect
from keel.core.docs import install_docs
from keel.core.errors import install_error_handlers
from keel.core.logging import configure_logging
from keel.core.metrics import Metrics
from keel.core.middleware.body_limit import BodyLimitMiddleware
from keel.core.middleware.compression import GZipWhenAccepted
from keel.core.middleware.cors import KeelCORSMiddleware
from keel.core.middleware.health import HealthMiddleware
from keel.core.middleware.observability import ObservabilityMiddleware
from keel.core.middleware.security_headers import SecurityHeadersMiddleware
from keel.core.middleware.unhandled import UnhandledErrorMiddleware
from keel.core.openapi import install_openapi
from keel.core.ratelimit import RateLimitHeadersMiddleware
from keel.core.routing import mount
from keel.files.router import router as files_router
from keel.health.router import router as health_router
from keel.items.router import router as items_router
from keel.jobs import JOBS, PERIODIC
from keel.realtime.router import router as realtime_router
from keel.resources import open_resources
from keel.users.router import router as users_router

API_PREFIX = "/api/v1"

# Headers a browser client may send and read across origins.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "If-None-Match",
    "X-API-Key",
    "X-Request-ID",
]
CORS_EXPOSED_HEADERS = [
    "ETag",
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-Request-ID",
]


# The groups of operations in the OpenAPI document, in the order the docs show them.
OPENAPI_TAGS = [
    {
        "name": "auth",
        "description": "Registration, the OAuth 2.0 token endpoint, sessions, "
        "e-mail verification and password reset.",
    },
    {"name": "users", "description": "The caller's own account, and user administration."},
    {"name": "api-keys", "description": "API keys, managed from a password sign-in."},
    {"name": "items", "description": "Items: lists, conditional writes, idempotency, export."},
    {"name": "files", "description": "Uploads, downloads with ranges, signed links."},
    {"name": "operations", "description": "Liveness, readiness and metrics."},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    check_settings(settings)
    configure_logging(settings)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(settings, metrics, JOBS, PERIODIC) as resources:
            resources.install(app)
            await resources.revocations.load()
            await ensure_first_admin(resources.database, resources.passwords, settings)
            yield

    openapi_url = "/openapi.json" if settings.show_docs else None
    app = FastAPI(
        title="Keel",
        version=keel.__version__,
        lifespan=lifespan,
        openapi_url=openapi_url,
        docs_url=None,
        redoc_url=None,
        # FastAPI's built-in OpenTelemetry checks its providers on every request; Keel
        # measures itself with Prometheus, so it stays off unless asked for.
        telemetry=None
        if settings.otel_enabled
        else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    if openapi_url:
        install_docs(app, openapi_url)
    install_openapi(app, OPENAPI_TAGS)

    install_error_handlers(app)
    install_relative_slash_redirect(app.router)
    for router in (
        health_router,
        auth_router,
        jwks_router,
        users_router,
        api_keys_router,
        items_router,
        files_router,
        realtime_router,
    ):
        mount(app, router)

    # Added innermost first: a request passes observability, security headers, the
    # /health fast path, CORS, compression, the body limit and the last-resort handler.
    app.add_middleware(UnhandledErrorMiddleware)
    # Puts a rate-limited route's RateLimit-* headers on whatever answer it gets (422s too).
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.http.max_json_body_bytes)
    app.add_middleware(GZipWhenAccepted, minimum_size=settings.http.gzip_min_bytes, compresslevel=6)
    if settings.cors.origins:
        app.add_middleware(
            KeelCORSMiddleware,
            allow_origins=settings.cors.origins,
            allow_credentials=settings.cors.allow_credentials,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(HealthMiddleware)
    app.add_middleware(SecurityHeadersMiddleware, hsts_max_age=settings.http.hsts_max_age)
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=metrics,
        skip_log_paths=frozenset(settings.log.access_skip_paths),
    )
    return app


def settle_garbage_collector() -> None:
    """Move what start-up built (modules, models, compiled schemas, routes: hundreds of
    thousands of objects that live as long as the process) out of the collector's sight.

    Profiled under load, full collections walked them all and stopped the event loop
    for 100-200 ms each, about a sixth of the loop's CPU; frozen, a collection looks
    only at what requests allocate.
    """
    gc.collect()
    gc.freeze()
    # A young collection looks at the container objects still alive since the last
    # one; a request's die by reference counting, so collecting after every 700
    # allocations (the default) mostly finds nothing, thousands of times a second.
    gc.set_threshold(50_000, 20, 20)


def app_factory() -> FastAPI:
    """Entry point for servers (`uvicorn --factory keel.main:app_factory`): settings from env."""
    app = create_app(Settings())
    settle_garbage_collector()
    return app
