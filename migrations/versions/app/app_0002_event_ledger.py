"""Event ledger: one row per (consumer group, event id) an exactly-once consumer has handled.

Revision ID: app_0002
Revises: app_0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import UUID

from conveyor.database import LEDGER_TABLE

revision = "app_0002"
down_revision: str | None = "app_0001"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever. A test checks that
# conveyor.database.LEDGER_RESULTS still matches what the migrated database accepts.
_RESULTS = ("success", "failure", "skipped")


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    schema = _schema()
    allowed = ", ".join(f"'{r}'" for r in _RESULTS)
    op.create_table(
        LEDGER_TABLE,
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("entry_id", sa.Text, nullable=False),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("processing_result", sa.Text, nullable=False, server_default="success"),
        sa.PrimaryKeyConstraint("consumer_group", "event_id", name="event_ledger_pkey"),
        sa.CheckConstraint(f"processing_result IN ({allowed})", name="event_ledger_result_check"),
        schema=schema,
    )
    op.create_index(
        "ix_event_ledger_type_processed",
        LEDGER_TABLE,
        ["event_type", "processed_at"],
        schema=schema,
    )
    op.create_index(
        "ix_event_ledger_group_processed",
        LEDGER_TABLE,
        ["consumer_group", "processed_at"],
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table(LEDGER_TABLE, schema=_schema())
