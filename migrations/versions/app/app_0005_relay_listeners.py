"""Relay listeners: producers NOTIFY only while a relay is waiting for it.

PostgreSQL serialises the commits of notifying transactions on one database-wide lock, so the
outbox trigger's NOTIFY on every commit cost single-event producers a quarter of their commit
rate from 4 connections on. Each relay that LISTENs now keeps a row in
`conveyor_relay_listeners` (keyed by its LISTEN connection's backend) saying whether it is
waiting for a NOTIFY or busy claiming (a busy relay claims again without being woken). The
trigger notifies unless every row says busy; with no rows at all (relays of earlier versions,
which never write one) it notifies as before.

A relay turns its row to waiting inside a transaction that first takes the table's ACCESS
EXCLUSIVE lock without waiting (NOWAIT): the trigger's read holds ACCESS SHARE until the
producer's transaction ends, so the lock is granted only once every producer that read "busy"
has committed or rolled back, and the relay's claim right after sees their rows. When the lock
is not free it stays busy and claims again shortly. That holds for READ COMMITTED producers (the
trigger's read takes a snapshot after its lock); REPEATABLE READ and SERIALIZABLE producers read
with their transaction's snapshot, possibly older than a "waiting", so they always notify.

The table is unlogged: its rows describe live connections, which a crash or failover ends
anyway; an empty table means "notify". Every role may read it (GRANT SELECT TO PUBLIC), so
producers' roles need no new grant; the relay's role writes it.

Downgrading drops the table and restores the trigger that notifies on every statement.

Revision ID: app_0005
Revises: app_0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import context, op

from conveyor.database import notify_channel

revision = "app_0005"
down_revision: str | None = "app_0004"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_LISTENERS = "conveyor_relay_listeners"
_NOTIFY = "conveyor_outbox_notify"


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    schema = _schema()
    op.execute(
        f"CREATE UNLOGGED TABLE {schema}.{_LISTENERS} ("
        "pid integer PRIMARY KEY, "
        "backend_start timestamptz, "
        "waiting boolean NOT NULL DEFAULT false, "
        "changed_at timestamptz NOT NULL DEFAULT now())"
    )
    # Producers' roles read it in the outbox trigger: they need no grant of their own for it (it
    # holds backend pids and flags, nothing of the application's).
    op.execute(f"GRANT SELECT ON {schema}.{_LISTENERS} TO PUBLIC")
    op.execute(
        f"COMMENT ON TABLE {schema}.{_LISTENERS} IS 'one row per relay LISTENing for this "
        "outbox (pid and backend_start of its LISTEN connection): waiting for NOTIFY, or busy "
        "claiming; the outbox trigger notifies unless every row says busy'"
    )
    # A volatile function (the default), so under READ COMMITTED each statement of the trigger
    # reads with a snapshot taken after its lock on the table was granted. REPEATABLE READ and
    # SERIALIZABLE transactions read with the snapshot of their first statement, which can
    # predate a relay's "waiting" that the lock did not hold back (the producer had not touched
    # the table yet): they notify unconditionally.
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {schema}.{_NOTIFY}() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('transaction_isolation') <> 'read committed' THEN
                PERFORM pg_notify('{notify_channel(schema)}', '');
            ELSIF (SELECT bool_or(waiting) FROM {schema}.{_LISTENERS}) IS NOT FALSE THEN
                PERFORM pg_notify('{notify_channel(schema)}', '');
            END IF;
            RETURN NULL;
        END
        $$
        """
    )


def downgrade() -> None:
    schema = _schema()
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {schema}.{_NOTIFY}() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{notify_channel(schema)}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(f"DROP TABLE {schema}.{_LISTENERS}")
