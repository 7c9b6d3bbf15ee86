"""Catalog: partitioned topics and the leases of ordered consumption.

`topic_layouts` holds one row per partitioned topic of a deployment (key prefix): how many
stream partitions its events are split into by a hash of the aggregate id
(`conveyor.wire.partition_of`), whether consumer groups apply them in order per aggregate, what
a dead-lettered event does to the later events of its aggregate (`park` holds them until the dead
letter is reprocessed or resolved, `pass` lets them through), and a version bumped on every
change so running processes notice one. A topic without a row is unpartitioned.

`partition_leases` holds, per (deployment, consumer group, topic, partition) of an ordered topic,
the member that owns the partition, the lease's epoch (raised on every change of owner) and when
the lease runs out. A member applies a partition's events only while it holds the lease, and its
ledger transaction checks the epoch (`FOR SHARE`), so an owner that lost its lease while paused
cannot commit. The downgrade drops both tables: the previous version has no partitions.

Revision ID: catalog_0007
Revises: catalog_0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "catalog_0007"
down_revision: str | None = "catalog_0006"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_LAYOUTS = "topic_layouts"
_LEASES = "partition_leases"
_NOW = sa.text("now()")


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    op.create_table(
        _LAYOUTS,
        sa.Column("key_prefix", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partitions", sa.Integer, nullable=False),
        sa.Column("ordered", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("on_dead_letter", sa.Text, nullable=False, server_default="park"),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("key_prefix", "topic", name="topic_layouts_pkey"),
        sa.CheckConstraint("partitions BETWEEN 1 AND 1024", name="topic_layouts_partitions"),
        sa.CheckConstraint(
            "on_dead_letter IN ('park', 'pass')", name="topic_layouts_on_dead_letter"
        ),
        schema=_schema(),
    )
    op.create_table(
        _LEASES,
        sa.Column("key_prefix", sa.Text, nullable=False),
        sa.Column("consumer_group", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("owner", sa.Text, nullable=True),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint(
            "key_prefix", "consumer_group", "topic", "partition", name="partition_leases_pkey"
        ),
        schema=_schema(),
    )


def downgrade() -> None:
    op.drop_table(_LEASES, schema=_schema())
    op.drop_table(_LAYOUTS, schema=_schema())
