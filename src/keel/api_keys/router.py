"""API key routes (API.md, "API keys"): keys are managed only from a password sign-in."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import delete, select

from keel.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from keel.auth.deps import PasswordLogin
from keel.core.db import DbSession
from keel.core.errors import NotFound
from keel.core.pagination import Page, PageParams, page_params, paginate
from keel.core.resources import resources_of
from keel.core.routing import KeelRoute
from keel.core.security.opaque import new_token, token_hash
from keel.models import ApiKey
from keel.models.base import utcnow

router = APIRouter(prefix="/api/v1/api-keys", tags=["api keys"], route_class=KeelRoute)

KeyPage = Annotated[PageParams, Depends(page_params({"created_at": ApiKey.created_at}))]
# How much of a key is kept in clear, so a person can tell keys apart in a list.
VISIBLE_CHARS = 8


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create_key(
    body: ApiKeyCreate, principal: PasswordLogin, request: Request, session: DbSession
) -> Any:
    """Create an API key; the key itself is in this answer and nowhere else."""
    prefix = resources_of(request).settings.auth.api_key_prefix
    key = new_token(prefix)
    expires_at = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    api_key = ApiKey(
        user_id=principal.user_id,
        name=body.name,
        prefix=key[: len(prefix) + VISIBLE_CHARS],
        key_hash=token_hash(key),
        expires_at=expires_at,
    )
    session.add(api_key)
    await session.flush()
    return ApiKeyCreated.model_validate(
        {**ApiKeyRead.model_validate(api_key).model_dump(), "key": key}
    )


@router.get("", response_model=Page[ApiKeyRead])
async def list_keys(
    principal: PasswordLogin, request: Request, session: DbSession, params: KeyPage
) -> Any:
    """The caller's API keys (without the keys themselves)."""
    query = select(ApiKey).where(ApiKey.user_id == principal.user_id)
    window = await paginate(
        session, query, params, id_column=ApiKey.id, codec=resources_of(request).cursors
    )
    return Page[ApiKeyRead].of(window)


@router.delete("/{key_id}", status_code=204)
async def delete_key(key_id: uuid.UUID, principal: PasswordLogin, session: DbSession) -> None:
    """Revoke an API key: it stops working at once."""
    result = await session.execute(
        delete(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.user_id == principal.user_id)
        .returning(ApiKey.id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound("API key not found")
