"""The catalog as one deployment (one key prefix) sees it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg

from admin.catalog import (
    dead_letters,
    layouts,
    processes,
    registry,
    reports,
    reprocess,
    requests,
    traces,
)
from admin.catalog.audit import AuditLog, audit_entries
from admin.catalog.processes import RegisteredProcess
from admin.catalog.records import AuditEntry, DeadLetterQuery, DeadLetterRecord, Progress
from admin.catalog.registry import RegisteredGroup
from conveyor import wire
from conveyor.layouts import Layout


class Catalog:
    """Every query the ops plane makes on the catalog schema, scoped to one deployment: the rows
    of other key prefixes sharing the catalog are never read or changed. There is no way to ask
    for "every deployment"."""

    def __init__(self, pool: asyncpg.Pool, key_prefix: str) -> None:
        self.pool = pool
        self.key_prefix = wire.validate_prefix(key_prefix)
        self.audit = AuditLog(pool, key_prefix)
        """Writes this deployment's audit rows (mutating calls, denials)."""

    async def list_dead_letters(
        self, query: DeadLetterQuery, *, page_size: int, page_token: str | None, token_key: bytes
    ) -> tuple[list[DeadLetterRecord], str | None]:
        """One page of dead letters matching `query`, newest first, and the next page's token."""
        return await dead_letters.list_dead_letters(
            self.pool,
            self.key_prefix,
            query,
            page_size=page_size,
            page_token=page_token,
            token_key=token_key,
        )

    async def dead_letter(self, topic: str, entry_id: str) -> DeadLetterRecord | None:
        """The dead letter at `entry_id` of the topic's dead-letter stream, or None."""
        return await dead_letters.get_dead_letter(self.pool, self.key_prefix, topic, entry_id)

    async def dead_letters(self, topic: str, entry_ids: Sequence[str]) -> list[DeadLetterRecord]:
        """The topic's dead letters with these entry ids, oldest first; unknown ids are absent."""
        return await dead_letters.get_dead_letters(self.pool, self.key_prefix, topic, entry_ids)

    async def resolve(
        self,
        records: Sequence[DeadLetterRecord],
        *,
        reason: str,
        principal: str,
        requested: Sequence[str] | None = None,
    ) -> list[int]:
        """Resolve these dead letters (not already resolved ones) and audit it, in one
        transaction; return the catalog ids that changed. The audit row names `requested`, the
        entry ids as the caller asked for them (default: the records' own, in their order)."""
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await dead_letters.resolve(
                conn, [r.id for r in records], reason=reason, principal=principal
            )
            await self.audit.record(
                principal=principal,
                action="resolve",
                target_ids=list(requested or [r.entry_id for r in records]),
                reason=reason,
                outcome=f"resolved {len(changed)}",
                conn=conn,
            )
        return changed

    async def audit_entries(self, target_ids: Sequence[str]) -> list[AuditEntry]:
        """Audit rows naming any of `target_ids`, oldest first."""
        return await audit_entries(self.pool, self.key_prefix, target_ids)

    async def report(self, topic: str, hours: int) -> reports.DeadLetterReport:
        """The topic's dead-letter report over the last `hours` hours."""
        return await reports.dead_letter_report(self.pool, self.key_prefix, topic, hours)

    async def trace(
        self, redis: Any, event_id: str, *, own_schemas: Sequence[str]
    ) -> traces.EventTrace:
        """Where one event has been, looked for in `own_schemas` and every registered ledger."""
        schemas = await registry.registry_schemas(self.pool, self.key_prefix, own_schemas)
        return await traces.trace_event(
            self.pool, redis, event_id, schemas=schemas, key_prefix=self.key_prefix
        )

    async def dead_letters_for_event(self, event_id: uuid.UUID) -> list[DeadLetterRecord]:
        """Every dead letter of the event, oldest first."""
        return await dead_letters.dead_letters_for_event(self.pool, self.key_prefix, event_id)

    async def dead_letters_of_events(
        self, event_ids: Sequence[uuid.UUID]
    ) -> list[DeadLetterRecord]:
        """The dead letters of any of these events, oldest first."""
        return await dead_letters.dead_letters_of_events(self.pool, self.key_prefix, event_ids)

    async def groups(self) -> list[RegisteredGroup]:
        """Every (topic, group) with a registered member."""
        return await registry.registered_groups(self.pool, self.key_prefix)

    async def stream_groups(self) -> list[RegisteredGroup]:
        """`groups()`, a group of a partitioned topic once per partition as `topic:N`."""
        return layouts.per_stream(await self.groups(), await self.layouts())

    async def layouts(self) -> dict[str, Layout]:
        """The deployment's partitioned topics, by topic."""
        return await layouts.layouts(self.pool, self.key_prefix)

    async def processes(self) -> list[RegisteredProcess]:
        """Every registered relay and consumer process, absent ones included."""
        return await processes.list_processes(self.pool, self.key_prefix)

    async def group_ledgers(self) -> dict[str, str | None]:
        """Each registered group's ledger schema (None: at-least-once)."""
        return await registry.group_ledgers(self.pool, self.key_prefix)

    async def answered(
        self, *, idempotency_key: str, principal: str, request_hash: str
    ) -> Progress | None:
        """The first answer to the reprocess request under `idempotency_key`, marked replayed,
        once a call with it has finished; else None (see `admin.catalog.requests.answered`)."""
        reprocess.check_key(idempotency_key)
        async with self.pool.acquire() as conn:
            return await requests.answered(
                conn, key=idempotency_key, principal=principal, request_hash=request_hash
            )

    async def reprocess(
        self,
        redis: Any,
        *,
        topic: str,
        records: Sequence[DeadLetterRecord],
        principal: str,
        ledger_schemas: Mapping[str, str | None],
        dry_run: bool = False,
        idempotency_key: str | None = None,
        request_hash: str = "",
        rate_limit: float = 0.0,
        on_progress: Callable[[Progress], Awaitable[None]] | None = None,
    ) -> Progress:
        """Requeue `records` to their failing groups (see `admin.catalog.reprocess`)."""
        return await reprocess.reprocess(
            self.pool,
            redis,
            topic=topic,
            records=records,
            key_prefix=self.key_prefix,
            principal=principal,
            audit=self.audit,
            ledger_schemas=ledger_schemas,
            dry_run=dry_run,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            rate_limit=rate_limit,
            on_progress=on_progress,
        )
