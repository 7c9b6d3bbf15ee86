"""Deliberately broken builds of Conveyor, for the checker's self-test only (never the product).

    python -m tests.torture.broken MODE relay|consume ...   # `conveyor relay|consume ...`, broken

Patches the product in this process, then runs the `conveyor` console script's entry point
(`admin.cli.app:main`) with the remaining arguments. A Pipeline runs a broken process with
`pipeline.specs[name].command = [sys.executable, "-m", "tests.torture.broken", MODE]`.

Each mode is one well-known bug, made with as small a change as it takes:

ack-before-commit        a consumer acknowledges a batch's entries (XACK) before it applies
                         them (`TopicWorker.finish` acknowledges first, then runs as before): an
                         entry acknowledged while its transaction is still open is gone for good
                         when that transaction never commits (the process killed mid-batch, a
                         handler failure whose retry finds the entry no longer pending) -> lost.
skip-ledger              an exactly-once group writes no ledger row and treats every event as
                         won (`Ledger.claim` answers as at-least-once mode does): an event
                         delivered again (a slow batch reclaimed by another member, a kill between
                         COMMIT and XACK) is applied again -> duplicates.
publish-without-marking  the relay's claim selects and locks the unpublished rows but no longer
                         marks them published (nor deletes them): it XADDs them and commits,
                         and the next claim finds them again -> republished over and over (every
                         at-least-once group applies them again), and the outbox never drains.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from admin.cli.app import main
from consumers.deliveries import Delivery
from consumers.ledger import Ledger
from consumers.worker import Batch, TopicWorker
from conveyor import database
from relay.store import OutboxStore


def _ack_before_commit() -> None:
    finish = TopicWorker.finish

    async def acknowledged_first(self: TopicWorker, batch: Batch) -> None:
        await self.streams.ack([d.entry for d in batch.deliveries])
        await finish(self, batch)

    TopicWorker.finish = acknowledged_first  # type: ignore[method-assign]


def _skip_ledger() -> None:
    async def everything_won(self: Ledger, conn: Any, part: Sequence[Delivery]) -> set[str]:
        return {d.event_id for d in part}

    Ledger.claim = everything_won  # type: ignore[method-assign]


def _publish_without_marking() -> None:
    init = OutboxStore.__init__

    def unmarked(self: OutboxStore, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        table = f"{self.schema}.{database.OUTBOX_TABLE}"
        self._claim_sql = (
            "SELECT id, event_id::text, topic, event_type, aggregate_id, traceparent, payload "
            f"FROM {table} WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        )

    OutboxStore.__init__ = unmarked  # type: ignore[method-assign]


MODES: dict[str, Callable[[], None]] = {
    "ack-before-commit": _ack_before_commit,
    "skip-ledger": _skip_ledger,
    "publish-without-marking": _publish_without_marking,
}


def run(argv: Sequence[str]) -> None:
    """Break the product as `argv[0]` says, then run `conveyor` with `argv[1:]`."""
    if not argv or argv[0] not in MODES:
        sys.exit(f"usage: python -m tests.torture.broken {{{','.join(MODES)}}} ARGS...")
    MODES[argv[0]]()
    sys.argv = ["conveyor", *argv[1:]]
    main()


if __name__ == "__main__":
    run(sys.argv[1:])
