"""Every ORM model, imported here so that Alembic and the tests see them all at once."""

from keel.models.base import Base, Timestamps, UTCDateTime, UUIDPrimaryKey

__all__ = ["Base", "Timestamps", "UTCDateTime", "UUIDPrimaryKey"]
