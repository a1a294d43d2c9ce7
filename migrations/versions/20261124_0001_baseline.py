"""baseline: the empty schema every later migration builds on

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The foundation has no tables of its own; this revision marks a database as
    # managed by Keel, so that /ready can tell "behind" from "never migrated".
    pass


def downgrade() -> None:
    pass
