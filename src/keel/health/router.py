"""Operations endpoints: liveness, readiness and metrics."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.asyncio import Redis

from keel.core.db import AppDatabase
from keel.core.deps import AppSettings, app_state
from keel.core.errors import Unauthorized
from keel.core.metrics import Metrics
from keel.core.routing import KeelRoute
from keel.health.checks import CheckResult, run_checks

router = APIRouter(route_class=KeelRoute, tags=["operations"])

_HEALTH_BODY = b'{"status":"ok"}'

RedisClient = Annotated[Redis | None, Depends(app_state("redis"))]
MetricsRegistry = Annotated[Metrics, Depends(app_state("metrics"))]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckResult]


@router.get("/health", response_model=Health, operation_id="operations-health")
async def health() -> Response:
    """Liveness: answers while the process runs, touching no dependency."""
    # Pre-encoded: this is what load balancers call most, and it never changes.
    return Response(_HEALTH_BODY, media_type="application/json")


@router.get(
    "/ready",
    response_model=Readiness,
    operation_id="operations-ready",
    responses={503: {"model": Readiness, "description": "A dependency is not ready"}},
)
async def ready(database: AppDatabase, redis: RedisClient) -> JSONResponse:
    """Readiness: database, Redis and migrations, each named in the answer."""
    checks = await run_checks(database.engine, redis)
    healthy = all(result in ("ok", "disabled") for result in checks.values())
    body = Readiness(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(
        body.model_dump(),
        status_code=200 if healthy else 503,
        headers=None if healthy else {"Retry-After": "5"},
    )


@router.get(
    "/metrics",
    response_class=Response,
    operation_id="operations-metrics",
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus' text format.",
        },
        401: {"description": "KEEL_METRICS_TOKEN is set and was not sent as a bearer token"},
    },
)
async def metrics(
    settings: AppSettings,
    registry: MetricsRegistry,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Prometheus metrics, summed across this host's worker processes."""
    token = settings.metrics.token
    if token is not None:
        expected = f"Bearer {token.get_secret_value()}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise Unauthorized(
                "A valid metrics token is required", headers={"WWW-Authenticate": "Bearer"}
            )
    return Response(registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
