"""Catalog: consumer registry, dead-letter state and the audit log of admin actions.

Revision ID: catalog_0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from conveyor.database import AUDIT_TABLE, CONSUMERS_TABLE, DEAD_LETTERS_TABLE

revision = "catalog_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever. A test checks that
# conveyor.database and conveyor.wire still match what the migrated database accepts.
_MODES = ("exactly-once", "at-least-once")
_REASONS = ("max_attempts", "rejected", "decode_error", "validation", "unknown_type", "oversized")
_STATES = ("open", "reprocessing", "reprocessed", "resolved")

_NOW = sa.text("now()")


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def _one_of(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _timestamp(name: str, *, default: bool = True) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=not default,
        server_default=_NOW if default else None,
    )


def _create_consumers(schema: str) -> None:
    op.create_table(
        CONSUMERS_TABLE,
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("consumer_name", sa.Text, nullable=False),
        sa.Column("topics", ARRAY(sa.Text), nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("ledger_schema", sa.Text, nullable=True),
        sa.Column("host", sa.Text, nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("grpc_addr", sa.Text, nullable=True),
        _timestamp("started_at"),
        _timestamp("heartbeat_at"),
        sa.PrimaryKeyConstraint("consumer_group", "consumer_name", name="consumers_pkey"),
        sa.CheckConstraint(_one_of("mode", _MODES), name="consumers_mode_check"),
        schema=schema,
    )


def _create_dead_letters(schema: str) -> None:
    op.create_table(
        DEAD_LETTERS_TABLE,
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("dlq_stream", sa.Text, nullable=False),
        sa.Column("dlq_entry_id", sa.Text, nullable=False),
        sa.Column("source_stream", sa.Text, nullable=False),
        sa.Column("source_entry_id", sa.Text, nullable=False),
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("consumer_name", sa.Text, nullable=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=True),
        sa.Column("event_type", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("error_class", sa.Text, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        _timestamp("first_failed_at", default=False),
        _timestamp("last_failed_at", default=False),
        sa.Column("state", sa.Text, nullable=False, server_default="open"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.Column("resolved_by", sa.Text, nullable=True),
        sa.Column("resolution", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="dead_letters_pkey"),
        sa.UniqueConstraint("dlq_stream", "dlq_entry_id", name="dead_letters_dlq_entry_key"),
        sa.CheckConstraint(_one_of("reason", _REASONS), name="dead_letters_reason_check"),
        sa.CheckConstraint(_one_of("state", _STATES), name="dead_letters_state_check"),
        schema=schema,
    )
    for name, columns in (
        ("ix_dead_letters_topic_state_created", ["topic", "state", "created_at"]),
        ("ix_dead_letters_event_id", ["event_id"]),
        ("ix_dead_letters_group_state_created", ["consumer_group", "state", "created_at"]),
    ):
        op.create_index(name, DEAD_LETTERS_TABLE, columns, schema=schema)


def _create_audit(schema: str) -> None:
    op.create_table(
        AUDIT_TABLE,
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        _timestamp("at"),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target_ids", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.PrimaryKeyConstraint("id", name="audit_pkey"),
        schema=schema,
    )
    op.create_index("ix_audit_at", AUDIT_TABLE, ["at"], schema=schema)


def upgrade() -> None:
    schema = _schema()
    _create_consumers(schema)
    _create_dead_letters(schema)
    _create_audit(schema)


def downgrade() -> None:
    schema = _schema()
    for table in (AUDIT_TABLE, DEAD_LETTERS_TABLE, CONSUMERS_TABLE):
        op.drop_table(table, schema=schema)
