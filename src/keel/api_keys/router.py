"""API key routes (API.md, "API keys"): keys are managed only from a password sign-in."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from keel.api_keys import repository, service
from keel.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from keel.auth.deps import PasswordLogin
from keel.core.db import DbSession
from keel.core.deps import AppSettings, Cursors
from keel.core.pagination import Page, PageParams, page_params
from keel.core.routing import KeelRoute

router = APIRouter(prefix="/api/v1/api-keys", tags=["api-keys"], route_class=KeelRoute)

KeyPage = Annotated[PageParams, Depends(page_params({"created_at": repository.COLUMNS.created_at}))]


@router.post("", status_code=201, response_model=ApiKeyCreated, operation_id="api-keys-create")
async def create_key(
    body: ApiKeyCreate, principal: PasswordLogin, db: DbSession, settings: AppSettings
) -> Any:
    """Create an API key; the key itself is in this answer and nowhere else."""
    return await service.create(
        db, settings.auth.api_key_prefix, principal.user_id, body.name, body.expires_in_days
    )


@router.get("", response_model=Page[ApiKeyRead], operation_id="api-keys-list")
async def list_keys(
    principal: PasswordLogin, db: DbSession, cursors: Cursors, params: KeyPage
) -> Any:
    """The caller's API keys (without the keys themselves)."""
    window = await service.list_page(db, cursors, principal.user_id, params)
    return window.as_page()


@router.delete(
    "/{key_id}",
    status_code=204,
    operation_id="api-keys-delete",
    responses={404: {"description": "No such key of the caller's"}},
)
async def delete_key(key_id: uuid.UUID, principal: PasswordLogin, db: DbSession) -> None:
    """Revoke an API key: it stops working at once."""
    await service.revoke(db, principal.user_id, key_id)
