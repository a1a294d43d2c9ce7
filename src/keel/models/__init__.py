"""Every ORM model, imported here so that Alembic and the tests see them all at once."""

from keel.models.api_key import ApiKey
from keel.models.auth import AuthSession, OneTimePurpose, OneTimeToken, RefreshToken
from keel.models.base import Base, Timestamps, UTCDateTime, UUIDPrimaryKey
from keel.models.file import File, StorageUsage
from keel.models.idempotency import IdempotencyRecord
from keel.models.item import Item, ItemStatus
from keel.models.user import Role, User

__all__ = [
    "ApiKey",
    "AuthSession",
    "Base",
    "File",
    "IdempotencyRecord",
    "Item",
    "ItemStatus",
    "OneTimePurpose",
    "OneTimeToken",
    "RefreshToken",
    "Role",
    "StorageUsage",
    "Timestamps",
    "UTCDateTime",
    "UUIDPrimaryKey",
    "User",
]
