"""Items: the owned resource every later resource copies."""

from __future__ import annotations

import enum
import uuid

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from keel.models.base import Base, Timestamps, UUIDPrimaryKey, value_enum


class ItemStatus(enum.StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"


# JSONB on PostgreSQL: `tags @> '["x"]'` is answered by the GIN index below.
TagList = JSON().with_variant(JSONB(), "postgresql")


class Item(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "items"
    # Keyset paging walks one of these in order, from the cursor on: (owner, key, id)
    # for a user's own list, (key, id) for moderators and admins reading every item.
    # The plans are recorded in docs/items.md.
    __table_args__ = (
        Index("ix_items_owner_created", "owner_id", "created_at", "id"),
        Index("ix_items_owner_updated", "owner_id", "updated_at", "id"),
        Index("ix_items_owner_title", "owner_id", "title", "id"),
        Index("ix_items_created", "created_at", "id"),
        Index("ix_items_updated", "updated_at", "id"),
        Index("ix_items_title", "title", "id"),
        Index(
            "ix_items_tags", "tags", postgresql_using="gin", info={"dialect": "postgresql"}
        ).ddl_if(dialect="postgresql"),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    status: Mapped[ItemStatus] = mapped_column(
        value_enum(ItemStatus, "item_status", 16),
        nullable=False,
        default=ItemStatus.DRAFT,
    )
    tags: Mapped[list[str]] = mapped_column(TagList, nullable=False, default=list)
    # Grows by exactly one per change, in the UPDATE itself; the ETag is "<version>".
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
