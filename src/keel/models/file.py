"""Files: the metadata of stored bytes (the bytes live in the storage backend), and
each user's running total of stored bytes, which the quota is checked against."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from keel.models.base import Base, UTCDateTime, UUIDPrimaryKey, utcnow


class File(UUIDPrimaryKey, Base):
    __tablename__ = "files"
    # Keyset paging walks one of these in order, as items' lists do: (owner, key, id)
    # for a user's own files, (key, id) for moderators and admins reading every file.
    __table_args__ = (
        Index("ix_files_owner_created", "owner_id", "created_at", "id"),
        Index("ix_files_owner_filename", "owner_id", "filename", "id"),
        Index("ix_files_owner_size", "owner_id", "size", "id"),
        Index("ix_files_created", "created_at", "id"),
        Index("ix_files_filename", "filename", "id"),
        Index("ix_files_size", "size", "id"),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    # The client's name made safe (API.md); never part of the storage key.
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    # Detected from the bytes, not taken from the client.
    content_type: Mapped[str] = mapped_column(String(100), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    # Where the bytes are: random, unique, and known only to the server.
    storage_key: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class StorageUsage(Base):
    """Bytes a user has stored, kept beside their files in the same transactions: the
    quota is one conditional UPDATE of this row, which concurrent uploads queue on."""

    __tablename__ = "storage_usage"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
