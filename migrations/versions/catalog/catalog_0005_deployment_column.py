"""Catalog: the deployment (key prefix) as a column of every table that is read per deployment.

`dead_letters.key_prefix` is generated from the dead-letter stream's key (`<prefix>:{topic}:dlq`),
so no writer can leave it out or get it wrong. `audit.key_prefix` is generated from
`detail.key_prefix`, where every version writes the deployment: processes of the previous version,
still running while the new one rolls out, go on inserting and reading audit rows unchanged. Rows
written before the deployment was recorded have `''`, and are shown to every deployment, as they
were before. Queries of one deployment then filter on a plain column (indexed for dead letters)
instead of a key match or a JSON field; the downgrade drops the columns and leaves every row as
it was.

Revision ID: catalog_0005
Revises: catalog_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "catalog_0005"
down_revision: str | None = "catalog_0004"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_DEAD_LETTERS = "dead_letters"
_AUDIT = "audit"


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    schema = _schema()
    op.add_column(
        _DEAD_LETTERS,
        sa.Column(
            "key_prefix",
            sa.Text,
            sa.Computed("split_part(dlq_stream, ':{', 1)", persisted=True),
            nullable=False,
        ),
        schema=schema,
    )
    op.create_index(
        "ix_dead_letters_prefix_topic", _DEAD_LETTERS, ["key_prefix", "topic", "id"], schema=schema
    )
    op.add_column(
        _AUDIT,
        sa.Column(
            "key_prefix",
            sa.Text,
            sa.Computed("coalesce(detail->>'key_prefix', '')", persisted=True),
            nullable=False,
        ),
        schema=schema,
    )


def downgrade() -> None:
    schema = _schema()
    op.drop_column(_AUDIT, "key_prefix", schema=schema)
    op.drop_index("ix_dead_letters_prefix_topic", _DEAD_LETTERS, schema=schema)
    op.drop_column(_DEAD_LETTERS, "key_prefix", schema=schema)
