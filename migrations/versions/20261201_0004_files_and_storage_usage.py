"""files and storage usage

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, columns) of the keyset-paging indexes, as for items.
PAGING_INDEXES = [
    ("ix_files_owner_created", ["owner_id", "created_at", "id"]),
    ("ix_files_owner_filename", ["owner_id", "filename", "id"]),
    ("ix_files_owner_size", ["owner_id", "size", "id"]),
    ("ix_files_created", ["created_at", "id"]),
    ("ix_files_filename", ["filename", "id"]),
    ("ix_files_size", ["size", "id"]),
]


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_files_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
        sa.UniqueConstraint("storage_key", name=op.f("uq_files_storage_key")),
    )
    for name, columns in PAGING_INDEXES:
        op.create_index(name, "files", columns, unique=False)

    op.create_table(
        "storage_usage",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_storage_usage_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_storage_usage")),
    )


def downgrade() -> None:
    op.drop_table("storage_usage")
    for name, _columns in reversed(PAGING_INDEXES):
        op.drop_index(name, table_name="files")
    op.drop_table("files")
