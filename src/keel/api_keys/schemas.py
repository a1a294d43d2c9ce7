"""API key bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from keel.core.bodies import RequestBody, WholeNumber


class ApiKeyCreate(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: Annotated[int, Field(ge=1, le=3650), WholeNumber] | None = None


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    # Shown this once: only its hash is kept.
    key: str
