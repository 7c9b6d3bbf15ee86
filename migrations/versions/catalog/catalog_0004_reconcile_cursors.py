"""Catalog: per-stream reconcile cursors, and the chain of a dead letter that failed again.

`dead_letter_cursors` holds, per dead-letter stream, the id of the last entry the reconciler
recorded, so a reconcile round reads every entry after it, however long the catalog was
unreachable (a time window would skip entries older than the window for good).

`dead_letters.retry_of` names the dead letter whose reprocessing ended in this one (the retry
entry failed again); `retried_as` is the other direction, set on the earlier dead letter when it
is settled as `reprocessed`.

Revision ID: catalog_0004
Revises: catalog_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "catalog_0004"
down_revision: str | None = "catalog_0003"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_CURSORS = "dead_letter_cursors"
_DEAD_LETTERS = "dead_letters"


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    schema = _schema()
    op.create_table(
        _CURSORS,
        sa.Column("dlq_stream", sa.Text, nullable=False),
        sa.Column("entry_id", sa.Text, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("dlq_stream", name="dead_letter_cursors_pkey"),
        schema=schema,
    )
    op.add_column(_DEAD_LETTERS, sa.Column("retry_of", sa.Text, nullable=True), schema=schema)
    op.add_column(_DEAD_LETTERS, sa.Column("retried_as", sa.Text, nullable=True), schema=schema)


def downgrade() -> None:
    schema = _schema()
    op.drop_column(_DEAD_LETTERS, "retried_as", schema=schema)
    op.drop_column(_DEAD_LETTERS, "retry_of", schema=schema)
    op.drop_table(_CURSORS, schema=schema)
