"""Outbox table, its claim and cleanup indexes, and the NOTIFY trigger that wakes relays.

Revision ID: app_0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import UUID

from conveyor.database import OUTBOX_TABLE, notify_channel

revision = "app_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_NOW = sa.text("now()")


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    schema = _schema()
    op.create_table(
        OUTBOX_TABLE,
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("aggregate_type", sa.Text, nullable=False),
        sa.Column("aggregate_id", sa.Text, nullable=False),
        sa.Column("traceparent", sa.Text, nullable=True),
        sa.Column(
            "payload", sa.LargeBinary, nullable=False, comment="serialized conveyor.v1.Event"
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="outbox_pkey"),
        sa.UniqueConstraint("event_id", name="outbox_event_id_key"),
        # The relay turns the topic into a Redis key: a row it could not publish would sit at the
        # head of the queue forever, so a bad topic fails the producer's INSERT instead.
        sa.CheckConstraint("topic ~ '^[a-z0-9][a-z0-9._-]{0,99}$'", name="outbox_topic_check"),
        schema=schema,
    )
    # The relay's claim: WHERE published_at IS NULL ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED.
    op.create_index(
        "ix_outbox_unpublished",
        OUTBOX_TABLE,
        ["id"],
        schema=schema,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    # Cleanup of published rows and replay by time.
    op.create_index(
        "ix_outbox_published_at",
        OUTBOX_TABLE,
        ["published_at"],
        schema=schema,
        postgresql_where=sa.text("published_at IS NOT NULL"),
    )
    # One constant, empty NOTIFY per statement: PostgreSQL folds duplicates within a transaction
    # and delivers at commit, so a rolled-back insert wakes nobody.
    op.execute(
        f"""
        CREATE FUNCTION {schema}.conveyor_outbox_notify() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{notify_channel(schema)}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        f"CREATE TRIGGER conveyor_outbox_notify AFTER INSERT ON {schema}.{OUTBOX_TABLE} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.conveyor_outbox_notify()"
    )


def downgrade() -> None:
    schema = _schema()
    op.drop_table(OUTBOX_TABLE, schema=schema)  # takes its indexes and trigger with it
    op.execute(f"DROP FUNCTION {schema}.conveyor_outbox_notify()")
