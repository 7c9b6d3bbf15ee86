"""Catalog: the consumer registry names each member's key prefix (its deployment).

Deployments sharing one database but not one key prefix (tenants, staging beside production)
register groups of the same name; the prefix keeps them apart in the registry's key and lets each
deployment's ops plane read only its own groups. Rows written before this revision, and by
consumers of earlier versions still running, get the default prefix `conveyor`.

Revision ID: catalog_0003
Revises: catalog_0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "catalog_0003"
down_revision: str | None = "catalog_0002"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_TABLE = "consumers"
_PKEY = "consumers_pkey"


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    schema = _schema()
    op.add_column(
        _TABLE,
        sa.Column("key_prefix", sa.Text, nullable=False, server_default=sa.text("'conveyor'")),
        schema=schema,
    )
    op.drop_constraint(_PKEY, _TABLE, type_="primary", schema=schema)
    op.create_primary_key(
        _PKEY, _TABLE, ["key_prefix", "consumer_group", "consumer_name"], schema=schema
    )


def downgrade() -> None:
    schema = _schema()
    # Members of two deployments may share a (group, name); the older key keeps the most recently
    # seen of them (the registry is rebuilt by the members' heartbeats anyway).
    op.execute(
        f'DELETE FROM "{schema}".{_TABLE} AS c USING "{schema}".{_TABLE} AS d '
        "WHERE c.consumer_group = d.consumer_group AND c.consumer_name = d.consumer_name "
        "AND (c.heartbeat_at, c.key_prefix) < (d.heartbeat_at, d.key_prefix)"
    )
    op.drop_constraint(_PKEY, _TABLE, type_="primary", schema=schema)
    op.create_primary_key(_PKEY, _TABLE, ["consumer_group", "consumer_name"], schema=schema)
    op.drop_column(_TABLE, "key_prefix", schema=schema)
