"""Helpers shared by the security tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

from keel.auth import repository
from keel.auth.one_time import (
    issue_one_time_token,
    reset_password_lifetime,
    verify_email_lifetime,
)
from keel.config import Settings
from keel.main import create_app
from keel.models import OneTimePurpose, User
from keel.resources import Resources
from tests.conftest import empty_tables
from tests.support.apps import client_for

# Limits far above what any test here sends, for apps whose tests are not about them.
NO_LIMITS = {
    "token_account": "100000/minute",
    "token_ip": "100000/minute",
    "register_ip": "100000/minute",
    "email_ip": "100000/minute",
}


async def one_time_token(app: FastAPI, user: User, purpose: OneTimePurpose) -> str:
    """A live verification or reset token of `user`, as its e-mail would carry it."""
    resources: Resources = app.state.resources
    settings: Settings = app.state.settings
    lifetime = (
        verify_email_lifetime(settings)
        if purpose == OneTimePurpose.VERIFY_EMAIL
        else reset_password_lifetime(settings)
    )
    async with resources.database.transaction() as db:
        row = await repository.find_user(db, user.id)
        assert row is not None
        return await issue_one_time_token(db, row, purpose, lifetime)


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app of the test's own settings on the test database, emptied afterwards."""
    app = create_app(settings)
    async with client_for(app) as client:
        try:
            yield app, client
        finally:
            await empty_tables(app)


def bearer(credential: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {credential}"}
