"""Sign-in's background jobs: its e-mails and the purge of spent and expired tokens.

Each e-mail job raises when the message cannot be delivered, so the runner retries it
with backoff; arguments are passed by name, so the log redacts the token in them.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import delete, or_

from keel.auth import repository
from keel.auth.mailer import TemplatedMailer
from keel.auth.one_time import issue_one_time_token, reset_password_lifetime
from keel.core.jobs import JobContext, job
from keel.models import AuthSession, OneTimePurpose, OneTimeToken, RefreshToken
from keel.models.base import utcnow

log = structlog.get_logger("keel.auth")


@job("auth.send_welcome")
async def send_welcome(ctx: JobContext, email: str, token: str | None) -> None:
    await TemplatedMailer(ctx.mail, ctx.settings).send_welcome(email, token)


@job("auth.send_verification")
async def send_verification(ctx: JobContext, email: str, token: str) -> None:
    await TemplatedMailer(ctx.mail, ctx.settings).send_verification(email, token)


@job("auth.send_password_changed")
async def send_password_changed(ctx: JobContext, email: str) -> None:
    await TemplatedMailer(ctx.mail, ctx.settings).send_password_changed(email)


@job("auth.send_password_reset")
async def send_password_reset(ctx: JobContext, email: str) -> None:
    """forgot-password's work, done after its 202: the answer and its timing are the
    same whether or not the address has an account."""
    async with ctx.database.transaction() as db:
        user = await repository.find_user_by_email(db, email)
        if user is None or not user["is_active"]:
            return
        token = await issue_one_time_token(
            db, user, OneTimePurpose.RESET_PASSWORD, reset_password_lifetime(ctx.settings)
        )
    # A retry after a failed delivery issues a fresh token; the unsent one expires unused.
    await TemplatedMailer(ctx.mail, ctx.settings).send_password_reset(user["email"], token)


@job("auth.purge_expired_tokens", max_retries=3)
async def purge_expired_tokens(ctx: JobContext) -> None:
    """Delete what can no longer sign anyone in.

    Sessions (and their refresh tokens) go once ended or expired for longer than an
    access token lives, plus an hour: until then an ended session must stay findable, as
    revocation checks fall back to the database.
    """
    now = utcnow()
    grace = timedelta(seconds=ctx.settings.auth.access_token_ttl_seconds, hours=1)
    async with ctx.sessionmaker() as session:
        refresh = await session.execute(delete(RefreshToken).where(RefreshToken.expires_at < now))
        sessions = await session.execute(
            delete(AuthSession).where(
                or_(AuthSession.ended_at < now - grace, AuthSession.expires_at < now - grace)
            )
        )
        one_time = await session.execute(
            delete(OneTimeToken).where(
                or_(OneTimeToken.expires_at < now, OneTimeToken.used_at.is_not(None))
            )
        )
        await session.commit()
    log.info(
        "tokens_purged",
        refresh_tokens=refresh.rowcount,  # type: ignore[attr-defined]
        sessions=sessions.rowcount,  # type: ignore[attr-defined]
        one_time_tokens=one_time.rowcount,  # type: ignore[attr-defined]
    )


JOBS = (send_welcome, send_verification, send_password_changed, send_password_reset)
PURGE_JOBS = (purge_expired_tokens,)
