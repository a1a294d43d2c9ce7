"""Auth routes (API.md, "Auth"): registration, the OAuth 2.0 token endpoint, sessions,
e-mail verification and password reset."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from keel.auth import jobs, repository, service, sessions, token
from keel.auth.deps import CurrentUser, IssuerDep, PasswordLogin, Revocations
from keel.auth.schemas import (
    Accepted,
    ForgotPasswordRequest,
    LogoutRequest,
    RegisterRequest,
    ResetPasswordRequest,
    SessionRead,
    TokenPair,
    UserRead,
    VerifyEmailRequest,
)
from keel.core.db import DbSession
from keel.core.deps import AppSettings, Cursors, Jobs, Passwords, app_state
from keel.core.errors import NotFound
from keel.core.pagination import Page, PageParams, page_params
from keel.core.ratelimit import per_ip, rate_limited
from keel.core.routing import KeelRoute
from keel.core.security.keys import KeyRing

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], route_class=KeelRoute)

SESSION_SORTS = {
    "created_at": repository.SESSION_COLUMNS.created_at,
    "last_used_at": repository.SESSION_COLUMNS.last_used_at,
}
SessionPage = Annotated[PageParams, Depends(page_params(SESSION_SORTS))]

# Counted per client IP before anything else runs, body validation included, so every
# answer (a 422 too) is counted and carries the RateLimit-* headers.
REGISTER_LIMIT = Depends(rate_limited(per_ip("register", lambda limits: limits.register_ip)))
EMAIL_LIMIT = Depends(rate_limited(per_ip("email", lambda limits: limits.email_ip)))


@router.post(
    "/register",
    status_code=201,
    response_model=UserRead,
    operation_id="auth-register",
    dependencies=[REGISTER_LIMIT],
    responses={
        403: {"description": "Registration is closed"},
        409: {"description": "An account with this e-mail exists"},
        422: {"description": "Invalid input, or a password the policy refuses"},
    },
)
async def register(
    body: RegisterRequest,
    db: DbSession,
    passwords: Passwords,
    jobs_queue: Jobs,
    settings: AppSettings,
) -> Any:
    """Create an account and send its verification e-mail."""
    return await service.register(
        db,
        passwords,
        jobs_queue,
        settings,
        email=body.email,
        password=body.password,
        full_name=body.full_name,
    )


@router.post(
    "/token",
    response_model=TokenPair,
    operation_id="auth-token",
    dependencies=[token.TOKEN_LIMITS],
    openapi_extra=token.FORM_SCHEMA,
    responses=token.RESPONSES,
)
async def issue_token(
    request: Request, form: token.Form, db: DbSession, passwords: Passwords, issuer: IssuerDep
) -> TokenPair:
    """OAuth 2.0 token endpoint: the password and refresh_token grants (RFC 6749)."""
    return await token.exchange(db, passwords, issuer, form, token.client_of(request))


@router.post("/logout", status_code=204, operation_id="auth-logout")
async def logout(body: LogoutRequest, db: DbSession, revocations: Revocations) -> None:
    """End the session of a refresh token (no credentials needed; unknown tokens too)."""
    await sessions.end_by_refresh_token(db, revocations, body.refresh_token)


@router.post("/logout-all", status_code=204, operation_id="auth-logout-all")
async def logout_all(principal: PasswordLogin, db: DbSession, revocations: Revocations) -> None:
    """End every session of the caller; their access tokens stop working at once."""
    await sessions.end_sessions(
        db, revocations, repository.of_user(principal.user_id), "logout_all"
    )


@router.get("/sessions", response_model=Page[SessionRead], operation_id="auth-sessions-list")
async def list_sessions(
    principal: PasswordLogin, db: DbSession, cursors: Cursors, params: SessionPage
) -> Any:
    """The caller's live sessions."""
    window = await sessions.list_page(db, cursors, principal.user_id, principal.session_id, params)
    return window.as_page()


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    operation_id="auth-sessions-delete",
    responses={404: {"description": "No such session of the caller's"}},
)
async def end_session(
    session_id: uuid.UUID, principal: PasswordLogin, db: DbSession, revocations: Revocations
) -> None:
    """End one of the caller's sessions (the current one included)."""
    ended = await sessions.end_own_session(db, revocations, principal.user_id, session_id)
    if not ended:
        raise NotFound("Session not found")


@router.post(
    "/verify-email",
    status_code=204,
    operation_id="auth-verify-email",
    responses={400: {"description": "The token is invalid, used or expired"}},
)
async def verify_email(body: VerifyEmailRequest, db: DbSession) -> None:
    """Confirm an e-mail address with the token the verification e-mail carried."""
    await service.verify_email(db, body.token)


@router.post(
    "/verify-email/request",
    status_code=202,
    response_model=Accepted,
    operation_id="auth-verify-email-request",
    dependencies=[EMAIL_LIMIT],
)
async def request_verification(
    _principal: PasswordLogin,
    user: CurrentUser,
    db: DbSession,
    jobs_queue: Jobs,
    settings: AppSettings,
) -> dict[str, str]:
    """Send a new verification e-mail."""
    await service.send_verification(db, jobs_queue, settings, user)
    return {"status": "accepted"}


@router.post(
    "/forgot-password",
    status_code=202,
    response_model=Accepted,
    operation_id="auth-forgot-password",
    dependencies=[EMAIL_LIMIT],
)
async def forgot_password(body: ForgotPasswordRequest, jobs_queue: Jobs) -> dict[str, str]:
    """Send a password-reset e-mail if the account exists; the answer is the same if not."""
    email = service.normalise_email(body.email)
    # The job looks the address up, so the answer takes as long for every address.
    await jobs_queue.enqueue(jobs.send_password_reset.call(email=email))
    return {"status": "accepted"}


@router.post(
    "/reset-password",
    status_code=204,
    operation_id="auth-reset-password",
    responses={
        400: {"description": "The token is invalid, used or expired"},
        422: {"description": "Invalid input, or a password the policy refuses"},
    },
)
async def reset_password(
    body: ResetPasswordRequest,
    db: DbSession,
    passwords: Passwords,
    jobs_queue: Jobs,
    revocations: Revocations,
) -> None:
    """Set a new password with a reset token; every session of the account ends."""
    await service.reset_password(
        db, passwords, jobs_queue, revocations, body.token, body.new_password
    )


# Mounted at the root: /.well-known/jwks.json.
jwks_router = APIRouter(tags=["auth"], route_class=KeelRoute)


Keys = Annotated[KeyRing, Depends(app_state("keys"))]


@jwks_router.get("/.well-known/jwks.json", operation_id="auth-jwks")
async def jwks(keys: Keys) -> dict[str, Any]:
    """The public keys that verify access tokens (every key whose tokens may be alive)."""
    return keys.jwks()
