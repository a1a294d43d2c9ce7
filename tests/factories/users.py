"""Users and signed-in clients for tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from keel.auth.service import create_user
from keel.models import Role, User
from keel.resources import Resources

DEFAULT_PASSWORD = "correct horse battery staple"
_numbers = itertools.count(1)


def unique_email(stem: str = "user") -> str:
    return f"{stem}{next(_numbers)}@example.com"


async def make_user(
    app: FastAPI,
    *,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    role: Role = Role.USER,
    is_active: bool = True,
    is_verified: bool = True,
    full_name: str | None = None,
) -> User:
    resources: Resources = app.state.resources
    async with resources.database.transaction() as db:
        row = await create_user(
            db,
            resources.passwords,
            email=email or unique_email(role.value),
            password=password,
            full_name=full_name,
            role=role,
            is_active=is_active,
            is_verified=is_verified,
        )
    # A detached model, so tests read it by attribute as before.
    return User(**row)


@dataclass
class SignedIn:
    user: User
    access_token: str
    refresh_token: str
    password: str = DEFAULT_PASSWORD

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def login(
    client: httpx.AsyncClient, email: str, password: str = DEFAULT_PASSWORD
) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    )


async def signed_in(
    app: FastAPI, client: httpx.AsyncClient, role: Role = Role.USER, **fields: object
) -> SignedIn:
    """A user of `role` and a token pair from a real password login."""
    user = await make_user(app, role=role, **fields)  # type: ignore[arg-type]
    response = await login(client, user.email)
    assert response.status_code == 200, response.text
    body = response.json()
    return SignedIn(user, body["access_token"], body["refresh_token"])
