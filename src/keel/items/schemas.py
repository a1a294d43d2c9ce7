"""Item bodies: what a caller may send (create, replace, update) and the one answer shape."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from keel.core.bodies import FromText, RequestBody
from keel.core.conditional import Versioned
from keel.models import ItemStatus

TAG_PATTERN = r"^[a-z0-9-]{1,32}$"
MAX_TAGS = 10

Title = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=10_000)]
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]


def _unique(tags: list[str]) -> list[str]:
    # A set in meaning, a list on the wire: repeats are dropped, the order is kept.
    return list(dict.fromkeys(tags))


Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS), AfterValidator(_unique)]


class ItemRead(Versioned):
    """An item as every answer shows it; its ETag is its version (`Versioned`)."""

    id: uuid.UUID
    owner_id: uuid.UUID
    title: str
    description: str
    status: ItemStatus
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


# The Item fields in API.md's order: the export's columns.
ITEM_FIELDS = tuple(ItemRead.model_fields)


class ItemWrite(RequestBody):
    """POST and PUT: every field; those left out take their defaults."""

    title: Title
    description: Description = ""
    status: Annotated[ItemStatus, FromText] = ItemStatus.DRAFT
    tags: Tags = Field(default_factory=list)


def _not_nullable(schema: dict[str, Any]) -> None:
    """Document optional fields that refuse null: `{"anyOf": [X, null]}` becomes X."""
    for field in schema.get("properties", {}).values():
        variants = [v for v in field.get("anyOf", ()) if v != {"type": "null"}]
        if len(variants) == 1:
            del field["anyOf"]
            field.update(variants[0])
        if field.get("default", ...) is None:
            del field["default"]


class ItemUpdate(RequestBody):
    """PATCH: only the fields sent change; none of them may be null."""

    model_config = ConfigDict(json_schema_extra=_not_nullable)

    # None stands for "not sent": null is refused (below), so the schema leaves it out.
    title: Title | None = None
    description: Description | None = None
    status: Annotated[ItemStatus, FromText] | None = None
    tags: Tags | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> ItemUpdate:
        nulls = [name for name in self.model_fields_set if getattr(self, name) is None]
        if nulls:
            raise ValueError(f"{', '.join(sorted(nulls))} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


@dataclass(frozen=True, slots=True)
class ItemFilters:
    status: ItemStatus | None = None
    tag: str | None = None
    q: str | None = None
    owner_id: uuid.UUID | None = None
