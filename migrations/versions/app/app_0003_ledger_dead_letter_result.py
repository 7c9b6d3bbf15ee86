"""Event ledger: the `dead_letter` result, a group's mark that it moved the event to the
dead-letter stream without applying it.

A member that reclaims an event past its attempts writes this row, in a transaction around the
move, before dead-lettering it. A slower member still holding the same delivery then finds the
row and does not apply the event after it was dead-lettered; only the group's own retry stream
(a reprocess) may apply it over the mark. Like `failure`, it does not count as applied.

Downgrading turns these rows into `failure` rows, which any delivery may apply over.

Revision ID: app_0003
Revises: app_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import context, op

revision = "app_0003"
down_revision: str | None = "app_0002"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here, not imported: a migration must create the same thing forever. A test checks that
# conveyor.database.LEDGER_RESULTS still matches what the migrated database accepts.
_TABLE = "event_ledger"
_CHECK = "event_ledger_result_check"
_BEFORE = ("success", "failure", "skipped")
_AFTER = (*_BEFORE, "dead_letter")


def _schema() -> str:
    """The schema being migrated, set by admin.migrations; every object is qualified with it."""
    return str(context.config.attributes["conveyor_schema"])


def _allow(results: tuple[str, ...]) -> None:
    schema = _schema()
    op.drop_constraint(_CHECK, _TABLE, type_="check", schema=schema)
    allowed = ", ".join(f"'{r}'" for r in results)
    op.create_check_constraint(_CHECK, _TABLE, f"processing_result IN ({allowed})", schema=schema)


def upgrade() -> None:
    _allow(_AFTER)


def downgrade() -> None:
    op.execute(
        f"UPDATE \"{_schema()}\".{_TABLE} SET processing_result = 'failure' "
        "WHERE processing_result = 'dead_letter'"
    )
    _allow(_BEFORE)
