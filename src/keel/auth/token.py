"""The OAuth 2.0 token endpoint's machinery (RFC 6749): reading the form, the
per-account limit, choosing the grant, and answering refusals as §5.2 says.

The route (auth/router.py) declares these and returns the token pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import FormData

from keel.auth import service, sessions
from keel.auth.schemas import TokenPair
from keel.core.client_ip import request_client_ip
from keel.core.db import Unit
from keel.core.deps import AppSettings, Limiter
from keel.core.openapi import answers
from keel.core.ratelimit import ip_key
from keel.core.request_input import NUL
from keel.core.routing import Answer
from keel.core.security.passwords import PasswordHasher

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

FORM_SCHEMA = {
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


class OAuthErrorBody(BaseModel):
    """The token endpoint's refusals (RFC 6749 §5.2), not the common error shape."""

    error: Literal["invalid_request", "invalid_grant", "unsupported_grant_type"]
    error_description: str


_TOKEN_HEADERS = {
    name: {"required": True, "schema": {"type": "string", "const": value}}
    for name, value in NO_STORE.items()
}
# The token endpoint's own answers; the common ones (413, 429, 503) are added centrally.
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A new token pair.", "headers": _TOKEN_HEADERS},
    400: {
        "model": OAuthErrorBody,
        "description": "Refused (RFC 6749 §5.2): bad credentials or token, a missing or "
        "repeated parameter, another grant type or body type",
        "headers": _TOKEN_HEADERS,
    },
}


class OAuthError(Answer):
    """An RFC 6749 §5.2 refusal: 400 {"error", "error_description"}, never cached.

    An answer, not a failure: the request's transaction still commits, so that a reused
    refresh token's family stays ended.
    """

    def __init__(self, error: str, description: str) -> None:
        self.error = error
        super().__init__(
            JSONResponse(
                {"error": error, "error_description": description},
                status_code=400,
                headers=NO_STORE,
            )
        )


@dataclass(frozen=True, slots=True)
class TokenForm:
    """The form's parameters, each once (`problem` says why the form is unusable)."""

    values: dict[str, str]
    problem: OAuthError | None = None


def _usernames(form: FormData) -> dict[str, str]:
    # A form refused for a repeated parameter still counts against its one account.
    usernames = form.getlist("username")
    if len(usernames) == 1 and isinstance(usernames[0], str):
        return {"username": usernames[0]}
    return {}


async def _read_form(request: Request) -> TokenForm:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        problem = "The body must be application/x-www-form-urlencoded"
        return TokenForm({}, OAuthError("invalid_request", problem))
    form = await request.form()
    values: dict[str, str] = {}
    for name in form:
        given = form.getlist(name)
        if len(given) > 1:
            repeated = OAuthError("invalid_request", f"Repeated parameter: {name}")
            return TokenForm(_usernames(form), repeated)
        if isinstance(given[0], str) and given[0]:
            values[name] = given[0]
    if any(NUL in text for pair in values.items() for text in pair):
        # PostgreSQL cannot compare text holding NUL: refused before any lookup.
        return TokenForm({}, OAuthError("invalid_request", "Parameters may not contain NUL"))
    return TokenForm(values)


Form = Annotated[TokenForm, Depends(_read_form)]


@answers(429, 503, rate_limit=True)
async def _limit(
    request: Request, response: Response, form: Form, limiter: Limiter, settings: AppSettings
) -> None:
    """Count the request against its IP and its account before anything else; 429 while
    either is exceeded, a correct password included."""
    limits = settings.limit
    checks = [(limits.token_ip, f"token:ip:{ip_key(request_client_ip(request) or 'unknown')}")]
    username = form.values.get("username")
    if username is not None:
        checks.append((limits.token_account, f"token:account:{username.strip().lower()}"))
    response.headers.update(NO_STORE)
    await limiter.enforce(request, *checks, response=response)


# The token endpoint's rate limits, as a route dependency.
TOKEN_LIMITS = Depends(_limit)


def client_of(request: Request) -> sessions.Client:
    return sessions.Client(
        ip=request_client_ip(request), user_agent=request.headers.get("user-agent")
    )


async def exchange(
    db: Unit,
    passwords: PasswordHasher,
    issuer: sessions.Issuer,
    form: TokenForm,
    client: sessions.Client,
) -> TokenPair:
    """Run the grant the form asks for; every refusal is an OAuthError."""
    if form.problem is not None:
        raise form.problem
    params = form.values
    grant = params.get("grant_type", "password")
    try:
        if grant == "password":
            if "username" not in params or "password" not in params:
                raise OAuthError("invalid_request", "username and password are required")
            return await service.password_grant(
                db, passwords, issuer, params["username"], params["password"], client
            )
        if grant == "refresh_token":
            if "refresh_token" not in params:
                raise OAuthError("invalid_request", "refresh_token is required")
            return await sessions.rotate(db, issuer, params["refresh_token"], client)
    except sessions.InvalidGrant as refused:
        sessions.log.info("token_refused", reason=refused.reason)
        raise OAuthError("invalid_grant", "Invalid credentials or token") from refused
    raise OAuthError("unsupported_grant_type", f"Unsupported grant type: {grant}")
