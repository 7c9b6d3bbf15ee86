"""What the consumer needs of the catalog: it records dead letters, reconciles them from the
dead-letter stream, expires settled ones, and keeps its member registered. The SQL lives with
the rest of the catalog's (`admin.catalog`); the consumer knows only this protocol, and is given
an implementation when it is built."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

import asyncpg

from conveyor import wire
from conveyor.layouts import Layout


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """What the catalog records of one dead-letter entry (its `conveyor.dead_letters` row)."""

    topic: str
    dlq_stream: str
    dlq_entry_id: str
    source_stream: str
    source_entry_id: str
    group: str
    consumer: str | None
    event_id: UUID | None
    event_type: str | None
    reason: str
    """A wire reason name (unknown ones are recorded as `validation`)."""
    error_class: str | None
    error: str | None
    attempts: int
    first_failed_at: datetime | None
    last_failed_at: datetime | None
    retry_of: str | None
    """Entry id of the dead letter whose reprocessing failed again and became this one."""


@dataclass(frozen=True, slots=True)
class Member:
    """A consumer process as the registry shows it."""

    key_prefix: str
    group: str
    name: str
    topics: tuple[str, ...]
    mode: str
    ledger_schema: str | None
    """None for an at-least-once member (no ledger)."""
    host: str
    pid: int
    grpc_addr: str | None


ReadAfter = Callable[[str | None, int], Awaitable[list[DeadLetterRow]]]
"""Reads up to n dead-letter entries after an entry id (from the start when None), as rows."""
DeleteEntries = Callable[[list[str]], Awaitable[None]]
"""Deletes dead-letter entries by id from their stream."""


class Catalog(Protocol):
    """The catalog, as a consumer process uses it."""

    async def record_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        """Record rows (state `open`); those recorded already are left as they are. A row that
        re-failed a reprocessed dead letter settles that one as `reprocessed`."""

    async def mark_reprocessed(self, dlq_stream: str, entry_ids: Sequence[str]) -> None:
        """Dead letters whose re-delivery was applied (or found applied) leave `reprocessing`."""

    async def dead_letters_of(
        self, dlq_stream: str, group: str, event_id: UUID
    ) -> list[tuple[str, str]]:
        """The dead letters of `event_id` that `group` wrote to `dlq_stream`, as (entry id,
        state) pairs."""

    async def reconcile(self, keys: wire.Keys, read_after: ReadAfter) -> int:
        """Record every entry of the topic's dead-letter stream after the stream's cursor, and
        move the cursor on; return how many entries were looked at."""

    async def expire_dead_letters(
        self, keys: wire.Keys, older_than: float, batch: int, delete_entries: DeleteEntries
    ) -> int:
        """Remove the topic's resolved and reprocessed dead letters settled more than
        `older_than` seconds ago, stream entry first; return how many were removed."""

    async def layouts(self, key_prefix: str) -> dict[str, Layout]:
        """The partitioned topics of the deployment with key prefix `key_prefix` (read at
        start: a topic's streams are those of its layout then)."""

    async def register(self, member: Member) -> None:
        """Register (or re-register) the member."""

    async def heartbeat(self, member: Member) -> None:
        """Tell the registry the member is alive."""

    async def unregister(self, member: Member) -> None:
        """Remove the member from the registry (a clean stop)."""


CatalogFactory = Callable[[asyncpg.Pool], Catalog]
"""Builds the catalog on the consumer's own pool (e.g. `admin.catalog.ConsumerCatalog`)."""
