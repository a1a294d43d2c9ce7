"""File answers, and the one body a file route takes (a link's lifetime)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from keel.core.bodies import RequestBody, WholeNumber

MAX_LINK_SECONDS = 86_400


class FileRead(BaseModel):
    """A file's metadata as every answer shows it; the bytes are at `.../content`."""

    id: uuid.UUID
    owner_id: uuid.UUID
    filename: str = Field(description="The client's name made safe; only a label.")
    content_type: str = Field(description="Detected from the bytes.")
    size: int = Field(description="In bytes.")
    sha256: str = Field(description="Hex digest of the bytes; the content's strong ETag.")
    created_at: datetime


class LinkRequest(RequestBody):
    expires_in: Annotated[
        int,
        Field(ge=1, le=MAX_LINK_SECONDS, description="Seconds the link works."),
        WholeNumber,
    ] = 300


class LinkRead(BaseModel):
    url: str = Field(description="Downloads the file without credentials until it expires.")
    expires_at: datetime
