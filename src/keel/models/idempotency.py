"""Idempotency records: the first response to a key, replayed to its retries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from keel.models.base import Base, UTCDateTime, UUIDPrimaryKey, utcnow


class IdempotencyRecord(UUIDPrimaryKey, Base):
    __tablename__ = "idempotency_records"
    # Keys are per caller and per endpoint: another user's identical key is another key.
    __table_args__ = (UniqueConstraint("user_id", "scope", "key"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    scope: Mapped[str] = mapped_column(String(100), nullable=False)  # "POST /api/v1/items"
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    # SHA-256 of the request body in canonical form: another body is another request.
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    # None while the first request is running; then the response it gave.
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
