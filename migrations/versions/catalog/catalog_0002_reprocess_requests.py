"""Catalog: reprocess requests by idempotency key, so a repeated request gets the first answer.

Revision ID: catalog_0002
Revises: catalog_0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "catalog_0002"
down_revision: str | None = "catalog_0001"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_TABLE = "reprocess_requests"


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("outcome", JSONB, nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("idempotency_key", name="reprocess_requests_pkey"),
        schema=_schema(),
    )


def downgrade() -> None:
    op.drop_table(_TABLE, schema=_schema())
