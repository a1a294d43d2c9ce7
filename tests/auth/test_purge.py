"""The periodic purge: what can no longer sign anyone in is deleted, nothing else."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from keel.auth.jobs import purge_expired_tokens
from keel.core.jobs.inprocess import InProcessRunner
from keel.jobs import JOBS, PERIODIC
from keel.models import AuthSession, OneTimePurpose, OneTimeToken, RefreshToken
from keel.models.base import utcnow
from tests.factories.users import signed_in

pytestmark = pytest.mark.anyio


async def count(app: FastAPI, model: type) -> int:
    async with app.state.resources.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def run_purge(app: FastAPI) -> None:
    runner = app.state.resources.jobs
    assert isinstance(runner, InProcessRunner)
    await runner.enqueue(purge_expired_tokens.call())
    await runner.join()


async def test_purge_deletes_expired_and_spent_tokens_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    keep = await signed_in(app, client)
    ended = await signed_in(app, client)
    recently_ended = await signed_in(app, client)
    now = utcnow()
    long_ago = now - timedelta(days=2)
    async with app.state.resources.sessionmaker() as session:
        await session.execute(
            update(AuthSession)
            .where(AuthSession.user_id == ended.user.id)
            .values(ended_at=long_ago, end_reason="logout")
        )
        await session.execute(
            update(AuthSession)
            .where(AuthSession.user_id == recently_ended.user.id)
            .values(ended_at=now - timedelta(minutes=1), end_reason="logout")
        )
        session.add_all(
            [
                OneTimeToken(
                    user_id=keep.user.id,
                    purpose=OneTimePurpose.VERIFY_EMAIL,
                    token_hash="a" * 64,
                    email=keep.user.email,
                    expires_at=now - timedelta(seconds=1),
                ),
                OneTimeToken(
                    user_id=keep.user.id,
                    purpose=OneTimePurpose.RESET_PASSWORD,
                    token_hash="b" * 64,
                    email=keep.user.email,
                    expires_at=now + timedelta(hours=1),
                    used_at=now,
                ),
                OneTimeToken(
                    user_id=keep.user.id,
                    purpose=OneTimePurpose.VERIFY_EMAIL,
                    token_hash="c" * 64,
                    email=keep.user.email,
                    expires_at=now + timedelta(hours=1),
                ),
            ]
        )
        await session.commit()
    assert await count(app, AuthSession) == 3
    assert await count(app, RefreshToken) == 3

    await run_purge(app)

    async with app.state.resources.sessionmaker() as session:
        users = set(await session.scalars(select(AuthSession.user_id)))
        assert users == {keep.user.id, recently_ended.user.id}
        hashes = set(await session.scalars(select(OneTimeToken.token_hash)))
        assert hashes == {"c" * 64}
    # The ended session's refresh token went with it; the live ones stay and still work.
    assert await count(app, RefreshToken) == 2
    refreshed = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": keep.refresh_token},
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_purge_deletes_expired_refresh_tokens(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signed_in(app, client)
    async with app.state.resources.sessionmaker() as session:
        await session.execute(
            update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    await run_purge(app)
    assert await count(app, RefreshToken) == 0
    refreshed = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": user.refresh_token},
    )
    assert refreshed.status_code == 400


def test_the_purge_is_scheduled_and_runnable_by_both_runners() -> None:
    assert purge_expired_tokens in [entry.job for entry in PERIODIC]
    assert purge_expired_tokens in JOBS
    assert len({job.name for job in JOBS}) == len(JOBS)
