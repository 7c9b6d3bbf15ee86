"""Housekeeping: safe stream trims, a length cap, expired dead letters, idle members, old ledger."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from redis.exceptions import RedisError, ResponseError

from consumers.catalog import Catalog
from consumers.metrics import ConsumerMetrics
from consumers.settings import ConsumerSettings
from conveyor import database, redis_client, wire
from conveyor import telemetry as t
from conveyor.entry_ids import EntryId
from conveyor.outages import Outage, unreachable
from conveyor.replies import text

log = logging.getLogger(__name__)

LEDGER_CHUNK = 10_000
"""Ledger rows deleted per statement, so no statement holds locks on millions of rows."""
DEAD_LETTER_BATCH = 500
"""Dead letters removed per transaction."""

_LOCK_KEY = "hashtextextended('conveyor.trim:' || $1::text, 0)"
TRY_LOCK_SQL = f"SELECT pg_try_advisory_lock({_LOCK_KEY})"
"""Session lock that lets one process at a time trim the stream named by $1."""
UNLOCK_SQL = f"SELECT pg_advisory_unlock({_LOCK_KEY})"

# Checking and deleting in one script: a member that reads between a separate XINFO and
# DELCONSUMER would take its new pending entries out of the pending list for good.
_DELETE_IDLE_MEMBER = """
for _, member in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local m = {}
  for i = 1, #member, 2 do m[member[i]] = member[i + 1] end
  if m.name == ARGV[2] and m.pending == 0 and m.idle > tonumber(ARGV[3]) then
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  end
end
return -1
"""

_ID_OK = "l.entry_id ~ '^[0-9]{1,20}-[0-9]{1,20}$'"
_ENTRY_ID_AS_ROW = (
    f"(CASE WHEN {_ID_OK} THEN split_part(l.entry_id, '-', 1)::numeric END, "
    f"CASE WHEN {_ID_OK} THEN split_part(l.entry_id, '-', 2)::numeric END)"
)
"""A ledger row's entry id as (ms, seq) for comparison in SQL; NULL for one not of that form."""
_FAILURES = (RedisError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(slots=True)
class HousekeepingReport:
    """What one `Housekeeper.run_once` did."""

    trimmed: dict[str, int] = field(default_factory=dict)
    """Event stream -> entries removed that every group had acknowledged (XTRIM MINID)."""
    capped: dict[str, int] = field(default_factory=dict)
    """Event stream -> entries removed by the length cap, which some group still needed."""
    skipped: list[str] = field(default_factory=list)
    """Event streams another process was trimming, left alone this round."""
    dead_letters_removed: int = 0
    consumers_removed: list[tuple[str, str]] = field(default_factory=list)
    """(stream, consumer) of idle group members removed."""
    ledger_deleted: int = 0
    errors: list[str] = field(default_factory=list)
    """Steps that failed (each is retried next round), as `step topic=...: error`."""


def retention_warning(settings: ConsumerSettings) -> str | None:
    """Why the ledger retention is unsafe, or None: a re-delivery after the ledger row is gone
    would apply the event twice."""
    window = settings.redelivery_window
    if not settings.exactly_once or settings.ledger_retention >= window:
        return None
    return (
        f"ledger_retention={settings.ledger_retention:g}s is shorter than the re-delivery window "
        f"of {window:g}s (backoffs plus max_attempts x claim_idle): an event re-delivered after "
        f"its ledger row was deleted would be applied twice; set ledger_retention >= {window:g}s"
    )


class Housekeeper:
    """Keeps the streams, the dead-letter catalog and the ledger of one group from growing
    without bound, without ever dropping an entry a group still needs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: Any,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
        *,
        catalog: Catalog,
        ledger_chunk: int = LEDGER_CHUNK,
        dead_letter_batch: int = DEAD_LETTER_BATCH,
        outage: Outage | None = None,
    ) -> None:
        self._pool = pool
        self._outage = outage
        """Told when PostgreSQL is away (which it logs), rather than a warning per step."""
        self._catalog = catalog
        self._client = client
        self._s = settings
        self._metrics = metrics
        self._ledger_chunk = ledger_chunk
        self._dead_letter_batch = dead_letter_batch
        self._delete_idle = client.register_script(_DELETE_IDLE_MEMBER)

    async def run_once(self, topics: Sequence[str | wire.Keys]) -> HousekeepingReport:
        """One round over `topics` (names of unpartitioned topics, or the keys of each stream,
        partitions included); a failing step is logged and reported, the others still run."""
        report = HousekeepingReport()
        for named in topics:
            keys = named if isinstance(named, wire.Keys) else wire.Keys(named, self._s.key_prefix)
            topic = keys.topic if keys.partition is None else f"{keys.topic}:{keys.partition}"
            await self._guard(report, f"trim topic={topic}", self._trim(keys.events, report))
            await self._guard(report, f"dead-letters topic={topic}", self._expire(keys, report))
            await self._guard(report, f"idle topic={topic}", self._remove_idle(keys, report))
        if self._s.exactly_once:
            await self._guard(report, "ledger", self._expire_ledger(report))
        return report

    async def _guard(self, report: HousekeepingReport, step: str, work: Awaitable[None]) -> None:
        try:
            await work
        except _FAILURES as exc:
            level = logging.WARNING
            if self._outage is not None and unreachable(exc):
                self._outage.failed(exc)
                level = logging.DEBUG
            log.log(
                level,
                "housekeeping failed: step=%s group=%s error=%r",
                step,
                self._s.group,
                exc,
            )
            report.errors.append(f"{step}: {exc!r}")

    async def _redis(self, command: Awaitable[Any]) -> Any:
        return await redis_client.within(self._s.dependency_timeout, command)

    async def _info(self, command: Awaitable[list[Any]]) -> list[Any]:
        """An XINFO reply; empty when the stream or group does not exist (yet)."""
        try:
            return list(await self._redis(command))
        except ResponseError as exc:
            if str(exc).startswith("NOGROUP") or "no such key" in str(exc):
                return []
            raise

    async def _trim(self, stream: str, report: HousekeepingReport) -> None:
        """Trim under a session advisory lock so two processes never trim one stream at once."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(TRY_LOCK_SQL, stream):
                log.info("trim skipped, another process holds the lock: stream=%s", stream)
                report.skipped.append(stream)
                return
            try:
                await self._trim_locked(stream, report)
            finally:
                await conn.fetchval(UNLOCK_SQL, stream)

    async def _trim_locked(self, stream: str, report: HousekeepingReport) -> None:
        cut = await self._oldest_needed(stream)
        if cut is not None:
            removed = await self._redis(
                self._client.xtrim(stream, minid=str(cut), approximate=False)
            )
            report.trimmed[stream] = removed
            if removed:
                log.info("trimmed acknowledged entries: stream=%s count=%d", stream, removed)
        cap = self._s.max_stream_length
        if cap is None:
            return
        capped = await self._redis(self._client.xtrim(stream, maxlen=cap, approximate=False))
        report.capped[stream] = capped
        if capped:
            self._metrics.trimmed.add(capped, {t.ATTR_STREAM: stream})
            # After the MINID trim, whatever the cap removes was still needed by some group.
            log.warning(
                "length cap removed entries not every group had handled: stream=%s count=%d "
                "max_stream_length=%d",
                stream,
                capped,
                cap,
            )

    async def _oldest_needed(self, stream: str) -> EntryId | None:
        """The oldest entry id some group of `stream` has not acknowledged or not yet been
        delivered; None when the stream has no groups (one may still be created at 0)."""
        cut: EntryId | None = None
        for group in await self._info(self._client.xinfo_groups(stream)):
            # Later reads only add pending entries newer than last-delivered-id, so a snapshot
            # taken before them errs on the side of keeping entries.
            needed = EntryId.parse(group["last-delivered-id"]).after()
            if group["pending"]:
                summary = await self._redis(self._client.xpending(stream, group["name"]))
                if summary["min"] is not None:
                    needed = min(needed, EntryId.parse(summary["min"]))
            cut = needed if cut is None else min(cut, needed)
        return cut

    async def _expire(self, keys: wire.Keys, report: HousekeepingReport) -> None:
        """Remove resolved and reprocessed dead letters past retention (stream and catalog)."""

        async def delete(ids: list[str]) -> None:
            await self._redis(self._client.xdel(keys.dlq, *ids))

        report.dead_letters_removed += await self._catalog.expire_dead_letters(
            keys, self._s.dead_letter_retention, self._dead_letter_batch, delete
        )

    async def _remove_idle(self, keys: wire.Keys, report: HousekeepingReport) -> None:
        """Remove members of this group idle past the timeout with nothing pending."""
        s = self._s
        idle_ms = int(s.idle_consumer_timeout * 1000)
        for stream in (keys.events, keys.retry(s.group)):
            for member in await self._info(self._client.xinfo_consumers(stream, s.group)):
                name = text(member["name"])
                if name == s.consumer or member["pending"] or member["idle"] <= idle_ms:
                    continue
                script = self._delete_idle(keys=[stream], args=[s.group, name, idle_ms])
                if await self._redis(script) == 0:
                    report.consumers_removed.append((stream, name))
                    log.info(
                        "removed idle consumer: stream=%s group=%s consumer=%s",
                        stream,
                        s.group,
                        name,
                    )

    async def _expire_ledger(self, report: HousekeepingReport) -> None:
        """Delete ledger rows past retention, except those whose entry is still in one of the
        group's streams: such an entry may be delivered again (pending on a member that died
        after COMMIT and before XACK, or the whole stream after a group loss), and without its
        row it would be applied twice."""
        s, chunk = self._s, self._ledger_chunk
        table = f"{s.ledger_schema}.{database.LEDGER_TABLE}"
        # One cutoff for the whole round: the floors are taken for the streams of the rows
        # older than it, and only those rows are deleted, however long the chunks take.
        cutoff = await self._pool.fetchval(
            "SELECT now() - make_interval(secs => $1)", s.ledger_retention
        )
        streams, ms, seq = await self._ledger_floors(cutoff)
        statement = (
            f"DELETE FROM {table} WHERE consumer_group = $1 AND event_id IN (SELECT event_id "
            f"FROM {table} AS l WHERE consumer_group = $1 AND processed_at < $2 "
            "AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], "
            "$5::numeric[], $6::numeric[]) AS f(stream, ms, seq) WHERE l.stream = f.stream AND "
            f"{_ENTRY_ID_AS_ROW} >= (f.ms, f.seq)) LIMIT $3)"
        )
        while True:
            status = await self._pool.execute(statement, s.group, cutoff, chunk, streams, ms, seq)
            deleted = int(status.split()[-1])
            report.ledger_deleted += deleted
            if deleted < chunk:
                break
        if report.ledger_deleted:
            log.info(
                "deleted expired ledger rows: group=%s schema=%s count=%d",
                s.group,
                s.ledger_schema,
                report.ledger_deleted,
            )

    async def _ledger_floors(self, cutoff: datetime) -> tuple[list[str], list[int], list[int]]:
        """The first entry still in each stream that rows past retention came from (those of
        the group's topics that another member consumes included), as parallel lists of stream,
        milliseconds and sequence; streams now empty or gone have none."""
        s = self._s
        streams = [
            r[0]
            for r in await self._pool.fetch(
                f"SELECT DISTINCT stream FROM {s.ledger_schema}.{database.LEDGER_TABLE} "
                "WHERE consumer_group = $1 AND processed_at < $2",
                s.group,
                cutoff,
            )
        ]
        out: tuple[list[str], list[int], list[int]] = ([], [], [])
        if not streams:
            return out
        pipe = self._client.pipeline(transaction=False)
        for stream in streams:
            pipe.xrange(stream, "-", "+", count=1)
        firsts = await self._redis(pipe.execute())
        for stream, first in zip(streams, firsts, strict=True):
            if first:
                ms, seq = EntryId.parse(first[0][0])
                out[0].append(stream)
                out[1].append(ms)
                out[2].append(seq)
        return out
