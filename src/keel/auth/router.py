"""Auth routes (API.md, "Auth"): registration, the OAuth 2.0 token endpoint, sessions,
e-mail verification and password reset."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select

from keel.auth import service, sessions
from keel.auth.deps import CurrentPrincipal, CurrentUser, PasswordLogin
from keel.auth.schemas import (
    ForgotPasswordRequest,
    LogoutRequest,
    RegisterRequest,
    ResetPasswordRequest,
    SessionRead,
    TokenPair,
    VerifyEmailRequest,
)
from keel.core.db import DbSession
from keel.core.errors import NotFound
from keel.core.pagination import Page, PageParams, page_params, paginate
from keel.core.ratelimit import RateLimitDecision
from keel.core.resources import Resources
from keel.core.routing import KeelRoute
from keel.models import AuthSession
from keel.users.schemas import UserRead

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], route_class=KeelRoute)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SESSION_SORTS = {"created_at": AuthSession.created_at, "last_used_at": AuthSession.last_used_at}
SessionPage = Annotated[PageParams, Depends(page_params(SESSION_SORTS))]


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def _client(request: Request) -> sessions.Client:
    return sessions.Client(
        ip=_resources(request).client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )


async def _limit(request: Request, response: Response, *checks: tuple[str, str]) -> None:
    decision: RateLimitDecision = await _resources(request).limiter.hit(*checks)
    decision.raise_if_refused()
    response.headers.update(decision.headers)


@router.post("/register", status_code=201, response_model=UserRead)
async def register(
    body: RegisterRequest, request: Request, response: Response, session: DbSession
) -> Any:
    """Create an account and send its verification e-mail."""
    resources = _resources(request)
    ip = resources.client_ip(request)
    await _limit(request, response, (resources.settings.limit.register_ip, f"register:ip:{ip}"))
    return await service.register(
        resources, session, email=body.email, password=body.password, full_name=body.full_name
    )


def _oauth_error(error: str, description: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=400,
        headers={**NO_STORE, **headers},
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


@router.post(
    "/token",
    response_model=TokenPair,
    openapi_extra=TOKEN_FORM_SCHEMA,
    responses={400: {"description": "RFC 6749 §5.2 error"}},
)
async def token(request: Request, session: DbSession) -> Response:
    """OAuth 2.0 token endpoint: the password and refresh_token grants (RFC 6749)."""
    resources = _resources(request)
    limits = resources.settings.limit
    ip = resources.client_ip(request)
    checks = [(limits.token_ip, f"token:ip:{ip}")]

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form = await request.form() if content_type == "application/x-www-form-urlencoded" else None
    grant_type = form.getlist("grant_type") if form is not None else []
    username = form.getlist("username") if form is not None else []
    if form is not None and grant_type in ([], ["password"]) and len(username) == 1:
        checks.append((limits.token_account, f"token:account:{str(username[0]).lower()}"))
    decision = await resources.limiter.hit(*checks)
    decision.raise_if_refused()
    headers = decision.headers

    if form is None:
        return _oauth_error(
            "invalid_request", "The body must be application/x-www-form-urlencoded", headers
        )
    repeated = [name for name in set(form.keys()) if len(form.getlist(name)) > 1]
    if repeated:
        return _oauth_error(
            "invalid_request", f"Repeated parameter: {sorted(repeated)[0]}", headers
        )

    def field(name: str) -> str | None:
        value = form.get(name)
        return value if isinstance(value, str) and value else None

    grant = field("grant_type") or "password"
    try:
        if grant == "password":
            email, password = field("username"), field("password")
            if email is None or password is None:
                return _oauth_error(
                    "invalid_request", "username and password are required", headers
                )
            pair = await service.password_grant(
                resources, session, email, password, _client(request)
            )
        elif grant == "refresh_token":
            refresh = field("refresh_token")
            if refresh is None:
                return _oauth_error("invalid_request", "refresh_token is required", headers)
            pair = await sessions.rotate(resources, session, refresh, _client(request))
        else:
            return _oauth_error("unsupported_grant_type", f"Unsupported grant: {grant}", headers)
    except sessions.InvalidGrant as refused:
        sessions.log.info("token_refused", grant=grant, reason=refused.reason)
        # Returned, not raised: a reused refresh token's family must stay ended (commit).
        return _oauth_error("invalid_grant", "Invalid credentials or token", headers)
    return JSONResponse(pair.model_dump(), headers={**NO_STORE, **headers})


@router.post("/logout", status_code=204)
async def logout(body: LogoutRequest, request: Request, session: DbSession) -> None:
    """End the session of a refresh token (no credentials needed; unknown tokens too)."""
    await sessions.end_by_refresh_token(_resources(request), session, body.refresh_token)


@router.post("/logout-all", status_code=204)
async def logout_all(principal: PasswordLogin, request: Request, session: DbSession) -> None:
    """End every session of the caller; their access tokens stop working at once."""
    await sessions.end_sessions(
        _resources(request), session, AuthSession.user_id == principal.user_id, "logout_all"
    )


@router.get("/sessions", response_model=Page[SessionRead])
async def list_sessions(
    principal: PasswordLogin, request: Request, session: DbSession, params: SessionPage
) -> Any:
    """The caller's live sessions."""
    query = select(AuthSession).where(sessions.live_sessions_of(principal.user_id))
    page = await paginate(
        session, query, params, id_column=AuthSession.id, codec=_resources(request).cursors
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
        _resources(request),
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


@router.post("/verify-email/request", status_code=202)
async def request_verification(
    _principal: PasswordLogin,
    user: CurrentUser,
    request: Request,
    response: Response,
    session: DbSession,
) -> dict[str, str]:
    """Send a new verification e-mail."""
    resources = _resources(request)
    ip = resources.client_ip(request)
    await _limit(request, response, (resources.settings.limit.email_ip, f"email:ip:{ip}"))
    await service.send_verification(resources, session, user)
    return {"status": "accepted"}


@router.post("/forgot-password", status_code=202)
async def forgot_password(
    body: ForgotPasswordRequest, request: Request, response: Response, background: BackgroundTasks
) -> dict[str, str]:
    """Send a password-reset e-mail if the account exists; the answer is the same if not."""
    resources = _resources(request)
    ip = resources.client_ip(request)
    await _limit(request, response, (resources.settings.limit.email_ip, f"email:ip:{ip}"))
    background.add_task(service.forgot_password, resources, resources.sessionmaker, body.email)
    return {"status": "accepted"}


@router.post("/reset-password", status_code=204)
async def reset_password(body: ResetPasswordRequest, request: Request, session: DbSession) -> None:
    """Set a new password with a reset token; every session of the account ends."""
    await service.reset_password(_resources(request), session, body.token, body.new_password)


# Mounted at the root: /.well-known/jwks.json.
jwks_router = APIRouter(tags=["auth"], route_class=KeelRoute)


@jwks_router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, Any]:
    """The public keys that verify access tokens (every key whose tokens may be alive)."""
    return _resources(request).keys.jwks()
