"""Reprocessing dead letters: each re-sent once, through the retry stream of the failing group.

Per dead letter, in order: one that is not `open` is skipped; one whose exactly-once group's ledger
already records the event as applied is resolved as a duplicate and not sent; any other is moved
`open` -> `reprocessing`, appended to `conveyor:{topic}:retry:<group>` and audited, the catalog
change and the audit row in one transaction around the XADD. The compare-and-set on the state is
what makes a double click, two concurrent calls or a retried call requeue each entry at most once.

Each entry's writes run shielded from cancellation: a cancelled call (an RPC deadline) stops
between entries, so every entry is either requeued once and recorded, or untouched.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Final, TypeVar

import asyncpg

from admin.catalog import requests, skips
from admin.catalog.audit import AuditLog
from admin.catalog.dead_letters import resolve, set_state
from admin.catalog.layouts import dlq_keys
from admin.catalog.layouts import layouts as layouts_of
from admin.catalog.records import MAX_SKIPS_SHOWN, DeadLetterRecord, Progress, Skip
from admin.catalog.requests import Pacer, shielded, stop_if_cancelled
from admin.errors import FailedPrecondition, InvalidInput
from conveyor import database, redis_client, wire
from conveyor.layouts import streams as layout_streams
from conveyor.replies import text, uuid_or_none

log = logging.getLogger(__name__)

MAX_KEY_CHARS: Final = 256
ACTION: Final = "reprocess"
"""Audit action of every row this module writes."""

_APPLIED: Final = ["success", "skipped"]
"""Ledger results that count as applied (guarantee 3)."""
_DL_PREFIX: Final = b"dl."
_SHOWN_IDS: Final = 20

T = TypeVar("T")


class _Action(Enum):
    REQUEUE = "requeued"
    DUPLICATE = "duplicate"
    SKIP = "skipped"


@dataclass(frozen=True)
class _Plan:
    action: _Action
    retry_fields: dict[bytes, bytes] | None = None
    skip: Skip | None = None


def check_reprocessable(records: Sequence[DeadLetterRecord]) -> None:
    """Raise FailedPrecondition naming the entry ids already resolved (asked for by id, they
    cannot be reprocessed); entries reprocessing or reprocessed are merely skipped later."""
    resolved = [r.entry_id for r in records if r.state == "resolved"]
    if resolved:
        more = f" and {len(resolved) - _SHOWN_IDS} more" if len(resolved) > _SHOWN_IDS else ""
        raise FailedPrecondition(
            f"dead letters already resolved cannot be reprocessed: "
            f"{', '.join(resolved[:_SHOWN_IDS])}{more}",
            ids=resolved,
        )


def retry_fields(dead_letter: Mapping[bytes, bytes], dead_letter_id: str) -> dict[bytes, bytes]:
    """The retry-stream entry for a dead letter: the original entry's fields (every `dl.` field
    dropped) plus RT_DEAD_LETTER naming the dead letter's entry id, and RT_TRACEPARENT carrying
    its DL_TRACEPARENT (the consumer links the reprocess's trace to it)."""
    out = {k: v for k, v in dead_letter.items() if not k.startswith(_DL_PREFIX)}
    out[wire.RT_DEAD_LETTER] = dead_letter_id.encode()
    out.pop(wire.RT_TRACEPARENT, None)  # an earlier reprocess's: this dead letter's wins
    traceparent = dead_letter.get(wire.DL_TRACEPARENT)
    if traceparent:
        out[wire.RT_TRACEPARENT] = traceparent
    return out


async def reprocess(
    pool: asyncpg.Pool,
    redis: Any,
    *,
    topic: str,
    records: Sequence[DeadLetterRecord],
    key_prefix: str,
    principal: str,
    audit: AuditLog,
    ledger_schemas: Mapping[str, str | None],
    dry_run: bool = False,
    idempotency_key: str | None = None,
    request_hash: str = "",
    rate_limit: float = 0.0,
    on_progress: Callable[[Progress], Awaitable[None]] | None = None,
) -> Progress:
    """Reprocess `records` (dead letters of `topic`), in order; return the final Progress.

    `on_progress` gets a Progress after each entry and the final one. `ledger_schemas` maps a
    consumer group to its ledger schema (None: at-least-once), see `group_ledgers`. With an
    idempotency key ("" counts as none) a repeated request returns the first one's outcome and
    requeues nothing; the same key with another `request_hash` or principal is InvalidInput.
    Calls with the same key wait for each other. A dry run changes nothing and ignores the key.
    `rate_limit` > 0 caps requeues per second.
    """
    _check_inputs(principal, idempotency_key, rate_limit)
    try:
        wire.validate_topic(topic)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="topic", value=topic[:64]) from None
    keys = wire.Keys(topic, key_prefix)
    async with pool.acquire() as conn:
        run = _Run(
            conn,
            redis,
            keys,
            key_prefix=key_prefix,
            principal=principal,
            audit=audit,
            ledgers=ledger_schemas,
            idempotency_key=idempotency_key,
        )
        if not idempotency_key or dry_run:
            final = await run.all(records, dry_run=dry_run, rate=rate_limit, report=on_progress)
        else:
            final = await requests.once(
                conn,
                key=idempotency_key,
                principal=principal,
                request_hash=request_hash,
                work=lambda: run.all(records, dry_run=False, rate=rate_limit, report=on_progress),
            )
    if on_progress is not None:
        await on_progress(final)
    return final


def check_key(key: str | None) -> None:
    """InvalidInput unless `key` is a usable idempotency key (or none: None or "")."""
    if key and (len(key) > MAX_KEY_CHARS or "\x00" in key):
        raise InvalidInput(
            f"invalid idempotency key: use 1 to {MAX_KEY_CHARS} characters without NUL",
            field="idempotency_key",
            value=key[:64],
        )


def _check_inputs(principal: str, key: str | None, rate_limit: float) -> None:
    if not principal or len(principal) > MAX_KEY_CHARS or "\x00" in principal:
        raise InvalidInput(
            f"invalid principal: use 1 to {MAX_KEY_CHARS} characters without NUL",
            field="principal",
            value=principal[:64],
        )
    check_key(key)
    if not (math.isfinite(rate_limit) and rate_limit >= 0):
        raise InvalidInput(
            f"invalid rate limit {rate_limit!r}: use requeues per second > 0, or 0 for no limit",
            field="rate_limit",
            value=str(rate_limit),
        )


class _Run:
    """One reprocess call's connection, clients and identity."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        redis: Any,
        keys: wire.Keys,
        *,
        key_prefix: str,
        principal: str,
        audit: AuditLog,
        ledgers: Mapping[str, str | None],
        idempotency_key: str | None,
    ) -> None:
        self.conn = conn
        self.redis = redis
        self.keys = keys
        self.prefix = key_prefix
        self.streams: list[wire.Keys] | None = None
        self.principal = principal
        self.audit = audit
        self.ledgers = ledgers
        self.detail: dict[str, Any] = {"topic": keys.topic}
        if idempotency_key:
            self.detail["idempotency_key"] = idempotency_key

    async def all(
        self,
        records: Sequence[DeadLetterRecord],
        *,
        dry_run: bool,
        rate: float,
        report: Callable[[Progress], Awaitable[None]] | None,
    ) -> Progress:
        progress = Progress(total=len(records))
        pace = Pacer(rate)
        for record in records:
            stop_if_cancelled()
            # Reads and waits are cancellable; each entry's writes are not (see shielded).
            plan = await self.plan(record)
            action = plan.action
            if not dry_run and action is _Action.REQUEUE:
                await pace.wait()
                action = await shielded(self.requeue(record, plan.retry_fields or {}))
            elif not dry_run and action is _Action.DUPLICATE:
                action = await shielded(self.resolve_duplicate(record))
            progress = _counted(progress, action, plan.skip or skips.changed(record))
            if report is not None:
                await report(progress)
        prefix, topic = self.audit.key_prefix, self.keys.topic
        explained = await skips.explain(self.conn, prefix, topic, progress.skips)
        return replace(progress, finished=True, skips=explained)

    async def plan(self, record: DeadLetterRecord) -> _Plan:
        """What to do with one dead letter, from reads only."""
        if record.state != "open":
            return _Plan(_Action.SKIP, skip=skips.not_open(record))
        keys = dlq_keys(record.dlq_stream, self.keys.topic, self.prefix)
        if keys is None or not _valid_group(record.group):
            log.warning(
                "reprocess: skipped, not this deployment's dead letter stream=%s entry=%s group=%r",
                record.dlq_stream,
                record.entry_id,
                record.group,
            )
            return _Plan(_Action.SKIP, skip=skips.other_deployment(record))
        now = await self.layout()
        if keys.events not in {k.events for k in now}:
            return _Plan(_Action.SKIP, skip=skips.earlier_layout(record, self.keys.topic, now))
        if await self.applied(record):
            return _Plan(_Action.DUPLICATE)
        async with asyncio.timeout(redis_client.COMMAND_TIMEOUT):
            found = await self.redis.xrange(keys.dlq, record.entry_id, record.entry_id)
        if not found:
            log.warning(
                "reprocess: skipped, gone from the dead-letter stream stream=%s entry=%s",
                keys.dlq,
                record.entry_id,
            )
            return _Plan(_Action.SKIP, skip=skips.gone(record, keys.dlq))
        return _Plan(_Action.REQUEUE, retry_fields(found[0][1], record.entry_id))

    async def layout(self) -> list[wire.Keys]:
        """The topic's streams by its layout now (read once per call): consumers read only
        these, and their retry streams."""
        if self.streams is None:
            self.streams = layout_streams(
                self.keys.topic, self.prefix, await layouts_of(self.conn, self.prefix)
            )
        return self.streams

    async def applied(self, record: DeadLetterRecord) -> bool:
        """Whether the group's ledger records the event as applied (exactly-once groups only)."""
        schema = self.ledgers.get(record.group)
        event_id = uuid_or_none(record.event_id)
        if schema is None or event_id is None:
            return False
        try:
            table = f"{database.validate_schema(schema)}.{database.LEDGER_TABLE}"
            found: bool = await self.conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {table} WHERE consumer_group = $1 "
                "AND event_id = $2 AND processing_result = ANY($3::text[]))",
                record.group,
                event_id,
                _APPLIED,
            )
        except (ValueError, asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError) as exc:
            # The consumer's own ledger check still applies the event at most once.
            log.warning(
                "reprocess: ledger unreadable, not checked group=%s schema=%r: %s",
                record.group,
                schema,
                exc,
            )
            return False
        return found

    async def requeue(self, record: DeadLetterRecord, fields: dict[bytes, bytes]) -> _Action:
        """open -> reprocessing, XADD to the group's retry stream and the audit row, together.

        The XADD sits inside the transaction: if it fails, nothing changed. If the commit itself
        fails the retry entry stays (the commit may have happened); the consumer marks the dead
        letter reprocessed when it applies the entry, whichever state it is in.
        """
        keys = dlq_keys(record.dlq_stream, self.keys.topic, self.prefix)
        assert keys is not None  # planned to be requeued
        stream = keys.retry(record.group)
        async with self.conn.transaction():
            moved = await set_state(self.conn, [record.id], "reprocessing", expect=["open"])
            if not moved:
                return _Action.SKIP  # a concurrent call or a resolve got there first
            async with asyncio.timeout(redis_client.COMMAND_TIMEOUT):
                retry_id = text(await self.redis.xadd(stream, fields))
            try:
                await self.audit.record(
                    principal=self.principal,
                    action=ACTION,
                    target_ids=[record.entry_id],
                    outcome=_Action.REQUEUE.value,
                    conn=self.conn,
                    detail={
                        **self.detail,
                        "group": record.group,
                        "retry_stream": stream,
                        "retry_entry_id": retry_id,
                        "event_id": record.event_id,
                    },
                )
            except BaseException:
                await self._withdraw(stream, retry_id)
                raise
        log.info(
            "reprocess: requeued stream=%s entry=%s group=%s event_id=%s retry=%s",
            keys.dlq,
            record.entry_id,
            record.group,
            record.event_id,
            retry_id,
        )
        return _Action.REQUEUE

    async def resolve_duplicate(self, record: DeadLetterRecord) -> _Action:
        """Resolve a dead letter its group has applied since, with its audit row."""
        resolution = f"duplicate: already applied by {record.group}"
        async with self.conn.transaction():
            changed = await resolve(
                self.conn,
                [record.id],
                reason=resolution,
                principal=self.principal,
                expect=("open",),
            )
            if not changed:
                return _Action.SKIP
            await self.audit.record(
                principal=self.principal,
                action=ACTION,
                target_ids=[record.entry_id],
                reason=resolution,
                outcome=_Action.DUPLICATE.value,
                conn=self.conn,
                detail={**self.detail, "group": record.group, "event_id": record.event_id},
            )
        return _Action.DUPLICATE

    async def _withdraw(self, stream: str, retry_id: str) -> None:
        """Delete a retry entry whose transaction is rolling back (best effort)."""
        try:
            async with asyncio.timeout(redis_client.COMMAND_TIMEOUT):
                await self.redis.xdel(stream, retry_id)
        except Exception as exc:  # noqa: BLE001 - the original error is the one to report
            log.error(
                "reprocess: could not withdraw retry entry stream=%s entry=%s: %r",
                stream,
                retry_id,
                exc,
            )


def _counted(progress: Progress, action: _Action, skip: Skip) -> Progress:
    """`progress` with one more entry done; `skip` says why when `action` is a skip."""
    done = progress.done + 1
    if action is _Action.REQUEUE:
        return replace(progress, done=done, requeued=progress.requeued + 1)
    if action is _Action.DUPLICATE:
        return replace(progress, done=done, duplicates=progress.duplicates + 1)
    shown = (*progress.skips, skip) if len(progress.skips) < MAX_SKIPS_SHOWN else progress.skips
    return replace(progress, done=done, skipped=progress.skipped + 1, skips=shown)


def _valid_group(group: str) -> bool:
    try:
        wire.validate_name("group", group)
    except ValueError:
        return False
    return True
