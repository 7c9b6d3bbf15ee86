"""Commit guard: only the consumer commits a transaction holding the ledger rows it claimed.

A consumer's claim of ledger rows also touches its connection's row of `conveyor_commit_guard`,
whose deferred constraint trigger fails the COMMIT unless the consumer set
`conveyor.ledger_commit` in that transaction, which it does just before its own COMMIT. So a
handler that sends COMMIT as SQL cannot commit the ledger rows of events whose handlers have not
run yet: its COMMIT fails and the whole transaction rolls back. The table is unlogged (its rows
mean nothing after a crash) and holds one row per consumer connection ever seen.

The trigger is a deferrable constraint, so a handler's `SET CONSTRAINTS ALL IMMEDIATE` would fire
it early: that fails with a message asking to name the constraints to check instead.

Revision ID: app_0004
Revises: app_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import context, op

revision = "app_0004"
down_revision: str | None = "app_0003"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever.
_GUARD = "conveyor_commit_guard"
_CHECK = "conveyor_commit_guard_check"


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def upgrade() -> None:
    schema = _schema()
    op.execute(
        f'CREATE UNLOGGED TABLE "{schema}".{_GUARD} (pid integer PRIMARY KEY, '
        "claims bigint NOT NULL DEFAULT 0)"
    )
    op.execute(
        f'CREATE FUNCTION "{schema}".{_CHECK}() RETURNS trigger LANGUAGE plpgsql AS $$ '
        "BEGIN IF current_setting('conveyor.ledger_commit', true) IS DISTINCT FROM 'on' THEN "
        "IF current_query() ~* '^\\s*set\\s+constraints' THEN "
        "RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_termination', MESSAGE = "
        "'SET CONSTRAINTS ALL would check Conveyor''s commit guard before the consumer''s "
        "COMMIT: name the constraints to check (SET CONSTRAINTS my_fkey IMMEDIATE)'; END IF; "
        "RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_termination', MESSAGE = "
        "'a transaction holding Conveyor ledger rows can only be committed by the consumer: "
        "a handler sent COMMIT as SQL (use ctx.db.transaction() instead)'; "
        "END IF; RETURN NULL; END $$"
    )
    op.execute(
        f'CREATE CONSTRAINT TRIGGER {_CHECK} AFTER INSERT OR UPDATE ON "{schema}".{_GUARD} '
        f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{schema}".{_CHECK}()'
    )


def downgrade() -> None:
    schema = _schema()
    op.execute(f'DROP TABLE "{schema}".{_GUARD}')
    op.execute(f'DROP FUNCTION "{schema}".{_CHECK}()')
