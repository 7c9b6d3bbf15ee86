"""Catalog: the relay registry, so a sweep (`conveyor status --all`) can find every process.

`relays` holds one row per running relay process, as `consumers` does per consumer: the
deployment (key prefix), the relay's name (`host-pid`, unique within the deployment), the
schemas it drains, its host and pid, the address its gRPC ops plane answers on, and when it
started and last beat. A relay inserts its row at start, beats every 10 s and deletes it on a
clean stop; a relay that died leaves its row, whose old heartbeat shows it absent. The downgrade
drops the table: relays of the previous version never wrote it.

Revision ID: catalog_0006
Revises: catalog_0005
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "catalog_0006"
down_revision: str | None = "catalog_0005"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_RELAYS = "relays"
_NOW = sa.text("now()")


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    op.create_table(
        _RELAYS,
        sa.Column("key_prefix", sa.Text, nullable=False),
        sa.Column("relay_name", sa.Text, nullable=False),
        sa.Column("schemas", ARRAY(sa.Text), nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("grpc_addr", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("key_prefix", "relay_name", name="relays_pkey"),
        schema=_schema(),
    )


def downgrade() -> None:
    op.drop_table(_RELAYS, schema=_schema())
