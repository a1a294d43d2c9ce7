"""Auth routes (API.md, "Auth"): registration, the OAuth 2.0 token endpoint, sessions,
e-mail verification and password reset."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.datastructures import FormData

from keel.auth import jobs, service, sessions
from keel.auth.deps import CurrentUser, PasswordLogin
from keel.auth.schemas import (
    ForgotPasswordRequest,
    LogoutRequest,
    RegisterRequest,
    ResetPasswordRequest,
    SessionRead,
    TokenPair,
    VerifyEmailRequest,
)
from keel.core.client_ip import request_client_ip
from keel.core.db import DbSession
from keel.core.errors import NotFound
from keel.core.pagination import Page, PageParams, page_params, paginate
from keel.core.ratelimit import ip_key, per_ip, rate_limited
from keel.core.resources import Resources, resources_of
from keel.core.routing import KeelRoute
from keel.models import AuthSession
from keel.users.schemas import UserRead

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], route_class=KeelRoute)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SESSION_SORTS = {"created_at": AuthSession.created_at, "last_used_at": AuthSession.last_used_at}
SessionPage = Annotated[PageParams, Depends(page_params(SESSION_SORTS))]


def _client(request: Request) -> sessions.Client:
    return sessions.Client(
        ip=request_client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )


def _ip_key(request: Request) -> str:
    """The per-IP budget the client counts against: IPv6 by its /64 (see ip_key)."""
    return ip_key(request_client_ip(request) or "unknown")


# Counted per client IP before anything else runs, body validation included, so every
# answer (a 422 too) is counted and carries the RateLimit-* headers.
REGISTER_LIMIT = Depends(rate_limited(per_ip("register", lambda limits: limits.register_ip)))
EMAIL_LIMIT = Depends(rate_limited(per_ip("email", lambda limits: limits.email_ip)))


@router.post("/register", status_code=201, response_model=UserRead, dependencies=[REGISTER_LIMIT])
async def register(body: RegisterRequest, request: Request, session: DbSession) -> Any:
    """Create an account and send its verification e-mail."""
    return await service.register(
        resources_of(request),
        session,
        email=body.email,
        password=body.password,
        full_name=body.full_name,
    )


TOKEN_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["password", "refresh_token"]},
                        "username": {"type": "string", "description": "e-mail (password grant)"},
                        "password": {"type": "string", "format": "password"},
                        "refresh_token": {"type": "string"},
                    },
                }
            }
        },
    }
}


class _Refused(Exception):
    """An RFC 6749 §5.2 error, answered as 400 {"error", "error_description"}."""

    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description
        super().__init__(description)


def _single_values(form: FormData | None) -> dict[str, str]:
    """The form's parameters, each once; a repeated one is invalid_request (§3.2)."""
    if form is None:
        raise _Refused("invalid_request", "The body must be application/x-www-form-urlencoded")
    values: dict[str, str] = {}
    for name in form:
        given = form.getlist(name)
        if len(given) > 1:
            raise _Refused("invalid_request", f"Repeated parameter: {name}")
        if isinstance(given[0], str) and given[0]:
            values[name] = given[0]
    return values


async def _grant(
    resources: Resources, session: DbSession, params: dict[str, str], client: sessions.Client
) -> TokenPair:
    grant = params.get("grant_type", "password")
    if grant == "password":
        if "username" not in params or "password" not in params:
            raise _Refused("invalid_request", "username and password are required")
        return await service.password_grant(
            resources, session, params["username"], params["password"], client
        )
    if grant == "refresh_token":
        if "refresh_token" not in params:
            raise _Refused("invalid_request", "refresh_token is required")
        return await sessions.rotate(resources, session, params["refresh_token"], client)
    raise _Refused("unsupported_grant_type", f"Unsupported grant type: {grant}")


@router.post(
    "/token",
    response_model=TokenPair,
    openapi_extra=TOKEN_FORM_SCHEMA,
    responses={400: {"description": "RFC 6749 §5.2 error"}},
)
async def token(request: Request, session: DbSession) -> Response:
    """OAuth 2.0 token endpoint: the password and refresh_token grants (RFC 6749)."""
    resources = resources_of(request)
    limits = resources.settings.limit
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form = await request.form() if content_type == "application/x-www-form-urlencoded" else None

    # The limits come first: while one is exceeded, even a correct password gets 429.
    checks = [(limits.token_ip, f"token:ip:{_ip_key(request)}")]
    usernames = form.getlist("username") if form is not None else []
    if len(usernames) == 1 and isinstance(usernames[0], str):
        checks.append((limits.token_account, f"token:account:{usernames[0].strip().lower()}"))
    decision = await resources.limiter.hit(*checks)
    decision.raise_if_refused()
    headers = {**NO_STORE, **decision.headers}

    try:
        pair = await _grant(resources, session, _single_values(form), _client(request))
    except sessions.InvalidGrant as refused:
        sessions.log.info("token_refused", reason=refused.reason)
        refusal = _Refused("invalid_grant", "Invalid credentials or token")
    except _Refused as refused:
        refusal = refused
    else:
        return JSONResponse(pair.model_dump(), headers=headers)
    # Returned, not raised, so the transaction commits: a reused refresh token's family
    # must stay ended.
    return JSONResponse(
        {"error": refusal.error, "error_description": refusal.description},
        status_code=400,
        headers=headers,
    )


@router.post("/logout", status_code=204)
async def logout(body: LogoutRequest, request: Request, session: DbSession) -> None:
    """End the session of a refresh token (no credentials needed; unknown tokens too)."""
    await sessions.end_by_refresh_token(resources_of(request), session, body.refresh_token)


@router.post("/logout-all", status_code=204)
async def logout_all(principal: PasswordLogin, request: Request, session: DbSession) -> None:
    """End every session of the caller; their access tokens stop working at once."""
    await sessions.end_sessions(
        resources_of(request), session, AuthSession.user_id == principal.user_id, "logout_all"
    )


@router.get("/sessions", response_model=Page[SessionRead])
async def list_sessions(
    principal: PasswordLogin, request: Request, session: DbSession, params: SessionPage
) -> Any:
    """The caller's live sessions."""
    query = select(AuthSession).where(sessions.live_sessions_of(principal.user_id))
    page = await paginate(
        session, query, params, id_column=AuthSession.id, codec=resources_of(request).cursors
    )
    return Page[SessionRead](
        data=[
            SessionRead(
                id=row.id,
                created_at=row.created_at,
                last_used_at=row.last_used_at,
                user_agent=row.user_agent,
                ip=row.ip,
                current=row.id == principal.session_id,
            )
            for row in page.rows
        ],
        next_cursor=page.next_cursor,
        total=page.total,
    )


@router.delete("/sessions/{session_id}", status_code=204)
async def end_session(
    session_id: uuid.UUID, principal: PasswordLogin, request: Request, session: DbSession
) -> None:
    """End one of the caller's sessions (the current one included)."""
    ended = await sessions.end_sessions(
        resources_of(request),
        session,
        sessions.live_sessions_of(principal.user_id) & (AuthSession.id == session_id),
        "ended_by_user",
    )
    if not ended:
        raise NotFound("Session not found")


@router.post("/verify-email", status_code=204)
async def verify_email(body: VerifyEmailRequest, session: DbSession) -> None:
    """Confirm an e-mail address with the token the verification e-mail carried."""
    await service.verify_email(session, body.token)


@router.post("/verify-email/request", status_code=202, dependencies=[EMAIL_LIMIT])
async def request_verification(
    _principal: PasswordLogin, user: CurrentUser, request: Request, session: DbSession
) -> dict[str, str]:
    """Send a new verification e-mail."""
    await service.send_verification(resources_of(request), session, user)
    return {"status": "accepted"}


@router.post("/forgot-password", status_code=202, dependencies=[EMAIL_LIMIT])
async def forgot_password(body: ForgotPasswordRequest, request: Request) -> dict[str, str]:
    """Send a password-reset e-mail if the account exists; the answer is the same if not."""
    email = service.normalise_email(body.email)
    # The job looks the address up, so the answer takes as long for every address.
    await resources_of(request).jobs.enqueue(jobs.send_password_reset.call(email=email))
    return {"status": "accepted"}


@router.post("/reset-password", status_code=204)
async def reset_password(body: ResetPasswordRequest, request: Request, session: DbSession) -> None:
    """Set a new password with a reset token; every session of the account ends."""
    await service.reset_password(resources_of(request), session, body.token, body.new_password)


# Mounted at the root: /.well-known/jwks.json.
jwks_router = APIRouter(tags=["auth"], route_class=KeelRoute)


@jwks_router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, Any]:
    """The public keys that verify access tokens (every key whose tokens may be alive)."""
    return resources_of(request).keys.jwks()
