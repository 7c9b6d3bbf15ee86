"""Waiting for a pipeline to come to rest (`settle`), then judging what it did (`check`).

    await settle(deployment, groups, timeout=60, diagnose=pipeline.tails)
    report = await check(deployment, groups, journal, seed=seed, ordered=("eo-a",))
    print(report.table()); report.assert_clean()

`settle` polls (bounded; a line of progress every 5 s) until: no outbox row is unpublished;
on the topic stream every group exists, has nothing pending and a lag of 0 (XINFO GROUPS; when
Redis cannot tell the lag, its last delivered id is the stream's last id); the same on each
group's retry stream where one exists; and every entry of the dead-letter stream has its catalog
row. On timeout: AssertionError with what is still behind and `diagnose()` (e.g. process logs).

`check` first resolves the journal's unknown transactions (by their orders rows), then counts
per group, over the events of the journal and the rows of `effects`:

lost        an event of a committed transaction with no effect in the group and no open or
            resolved dead letter of the group (a dead letter still `reprocessing`, or
            `reprocessed` with no effect, does not account for it)
duplicate   exactly-once groups: an event with more than one effect in the group
phantom     an effect of an event whose transaction failed, or that the journal never enqueued
misrouted   an effect delivered from (a) another group's retry stream, (b) the group's own
            retry stream for an event the group has no dead letter of, (c) a topic-stream entry
            carrying a reprocess mark (a reprocess belongs in its group's retry stream: written
            to the topic stream it reaches every group), or (d) the very entry the group
            dead-lettered (dead-lettered and applied). The router records each effect's stream
            and entry id, which is what makes (a)-(d) visible; a reprocessed dead letter of
            group G applies from G's retry stream only, so its effect anywhere else is caught
            by (a)-(c).
order       groups named in `ordered` only: per aggregate, the first effect of each event
            (deliveries from the topic stream; retry-stream applies are exempt, see
            docs/architecture.md "Ordering": a retried event applies after those that
            followed it) must follow stream order; an event whose entry id is lower than that
            of an event of its aggregate applied before it counts once. Stream order, not
            outbox id order: two transactions can commit in the opposite order of their ids,
            and the relay publishes whichever commits first. The promise holds within one
            consumer: declare only groups with one member, without crashes (re-deliveries
            reorder by design).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.exceptions import RedisError, ResponseError

from conveyor import redis_client
from tests.torture.deployment import Deployment, Group
from tests.torture.facts import Effect, Facts, load_facts, traces
from tests.torture.report import GroupCounts, Report
from tests.torture.workload import Journal, Txn

EXAMPLES = 5
_ACCOUNTED = ("open", "resolved")


@dataclass
class Backlog:
    """What is not done yet; `settled` when nothing is."""

    behind: list[str] = field(default_factory=list)
    unpublished: int | None = None

    @property
    def settled(self) -> bool:
        return not self.behind

    def describe(self) -> str:
        return "; ".join(self.behind) or "settled"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _group_state(r: Any, stream: str, group: str, *, required: bool) -> str | None:
    """Why `group` on `stream` is not caught up, or None when it is."""
    try:
        groups = await r.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return f"{stream} missing" if required else None
        raise
    info = next((g for g in groups if _text(g["name"]) == group), None)
    if info is None:
        return f"group {group} missing on {stream}" if required else None
    pending, lag = int(info["pending"]), info.get("lag")
    if lag is None:
        last = _text((await r.xinfo_stream(stream))["last-generated-id"])
        lag = 0 if _text(info["last-delivered-id"]) == last else "?"
    if pending or lag != 0:
        return f"{group}@{stream.rsplit(':', 1)[-1]} pending {pending} lag {lag}"
    return None


async def backlog(deployment: Deployment, groups: Sequence[Group]) -> Backlog:
    """One look at everything `settle` waits for; a server that does not answer is behind."""
    d, out = deployment, Backlog()
    dlqs = [k.dlq for k in d.streams]
    try:
        conn = await asyncpg.connect(d.database_url, timeout=5)
        try:
            out.unpublished = int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {d.schema}.outbox WHERE published_at IS NULL"
                )
            )
            recorded = int(
                await conn.fetchval(
                    "SELECT count(*) FROM conveyor.dead_letters WHERE dlq_stream = ANY($1)", dlqs
                )
            )
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        out.behind.append(f"PostgreSQL: {exc!r}")
        return out
    if out.unpublished:
        out.behind.append(f"{out.unpublished} outbox rows unpublished")
    r = redis_client.connect(d.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        for g in groups:
            for keys in d.streams:
                for stream, required in ((keys.events, True), (keys.retry(g.name), False)):
                    if state := await _group_state(r, stream, g.name, required=required):
                        out.behind.append(state)
        in_stream = sum([int(await r.xlen(dlq)) for dlq in dlqs])
        if in_stream != recorded:
            out.behind.append(f"{in_stream} dead-letter entries, {recorded} in the catalog")
    except (OSError, RedisError) as exc:
        out.behind.append(f"Redis: {exc!r}")
    finally:
        await r.aclose()
    return out


async def settle(
    deployment: Deployment,
    groups: Sequence[Group],
    *,
    timeout: float = 60.0,
    interval: float = 0.25,
    progress_every: float = 5.0,
    diagnose: Callable[[], str] | None = None,
) -> Backlog:
    """Wait until the outbox is drained and every group has caught up (see the module's
    docstring); AssertionError naming what is behind after `timeout` seconds."""
    started = time.monotonic()
    last_print = started
    while True:
        state = await backlog(deployment, groups)
        now = time.monotonic()
        if state.settled:
            print(f"settled after {now - started:.1f}s")
            return state
        if now - started > timeout:
            extra = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"not settled after {timeout}s: {state.describe()}{extra}")
        if now - last_print >= progress_every:
            print(f"settling ({now - started:.0f}s): {state.describe()}")
            last_print = now
        await asyncio.sleep(interval)


@dataclass
class _Found:
    """One group's counted events per kind, with notes."""

    events: dict[str, list[uuid.UUID]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[tuple[str, uuid.UUID], str] = field(default_factory=dict)

    def add(self, kind: str, event_id: uuid.UUID, note: str = "") -> None:
        if event_id in self.events[kind]:
            return
        self.events[kind].append(event_id)
        if note:
            self.notes[(kind, event_id)] = note


def _judge(
    deployment: Deployment,
    group: Group,
    journal_index: dict[uuid.UUID, Txn],
    committed: Collection[uuid.UUID],
    facts: Facts,
    ordered: bool,
) -> tuple[GroupCounts, _Found]:
    topic_streams = {k.events for k in deployment.streams}
    own_retries = {k.retry(group.name) for k in deployment.streams}
    effects: dict[uuid.UUID, list[Effect]] = defaultdict(list)
    for e in facts.effects:
        if e.group == group.name:
            effects[e.event_id].append(e)
    letters = [d for d in facts.dead_letters if d.group == group.name]
    dead = {d.event_id for d in letters if d.state in _ACCOUNTED}
    has_letter = {d.event_id for d in letters}
    dead_sources = {(d.source_stream, d.source_entry_id): d for d in letters}
    reprocess_entries = {e.entry_id for e in facts.entries or () if e.reprocess_of}
    found = _Found()
    for event_id in committed:
        if event_id not in effects and event_id not in dead:
            found.add("lost", event_id)
    for event_id, rows in effects.items():
        txn = journal_index.get(event_id)
        if txn is None or txn.status != "ok":
            why = "not in the journal" if txn is None else f"transaction {txn.status}"
            found.add("phantom", event_id, why)
        if group.exactly_once and len(rows) > 1:
            found.add("duplicate", event_id, f"{len(rows)} effects")
        for row in rows:
            if why := _misrouted(row, own_retries, topic_streams, event_id in has_letter,
                                 reprocess_entries, dead_sources):  # fmt: skip
                found.add("misrouted", event_id, why)
    if ordered:
        for event_id, why in _order_violations(effects, topic_streams):
            found.add("order", event_id, why)
    counts = GroupCounts(
        group.name,
        group.exactly_once,
        expected=len(committed),
        applied=sum(1 for e in committed if e in effects),
        effects=sum(len(rows) for rows in effects.values()),
        dead_lettered=sum(1 for e in committed if e in dead),
        order=len(found.events["order"]) if ordered else None,
    )
    for kind in ("lost", "duplicate", "phantom", "misrouted"):
        setattr(counts, kind, len(found.events[kind]))
    return counts, found


def _misrouted(
    row: Effect,
    own_retries: set[str],
    topic_streams: set[str],
    has_letter: bool,
    reprocess_entries: set[str],
    dead_sources: dict[tuple[str, str], Any],
) -> str:
    if (row.stream, row.entry_id) in dead_sources:
        return f"applied from {row.entry_id}, the entry the group dead-lettered"
    if row.stream in topic_streams:
        if row.entry_id in reprocess_entries:
            return f"applied from reprocess entry {row.entry_id} in the topic stream"
        return ""
    if row.stream not in own_retries:
        return f"applied from {row.stream}, not the group's stream or retry stream"
    if not has_letter:
        return f"applied from its retry stream ({row.entry_id}) without a dead letter of it"
    return ""


def _order_violations(
    effects: dict[uuid.UUID, list[Effect]], topic_streams: set[str]
) -> list[tuple[uuid.UUID, str]]:
    """Per aggregate, in effect order (an aggregate's events are all in one stream, so their
    entry ids compare, partitioned or not)."""
    firsts = sorted(
        (rows[0] for rows in effects.values() if rows[0].stream in topic_streams),
        key=lambda e: e.seq,
    )
    highest: dict[str, tuple[tuple[int, int], Effect]] = {}
    out = []
    for e in firsts:
        at = _entry_key(e.entry_id)
        best = highest.get(e.aggregate_id)
        if best is not None and at < best[0]:
            why = f"entry {e.entry_id} applied after {best[1].event_id} (entry {best[1].entry_id})"
            out.append((e.event_id, why))
        else:
            highest[e.aggregate_id] = (at, e)
    return out


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def check(
    deployment: Deployment,
    groups: Sequence[Group],
    journal: Journal,
    *,
    seed: int | None,
    ordered: Collection[str] = (),
    scan_streams: bool = True,
) -> Report:
    """Resolve the journal's unknown transactions, read everything back and count per group
    (see the module's docstring). Call after `settle`."""
    await journal.resolve(deployment.database_url, deployment.schema)
    facts = await load_facts(deployment, scan_streams=scan_streams)
    index = journal.index()
    committed = [e.event_id for _, e in journal.events("ok")]
    report = Report(seed, [], _totals(journal))
    for g in groups:
        counts, found = _judge(deployment, g, index, committed, facts, g.name in ordered)
        report.groups.append(counts)
        for kind, ids in found.events.items():
            if ids:
                report.examples[(g.name, kind)] = sorted(ids, key=str)[:EXAMPLES]
        for (kind, event_id), note in found.notes.items():
            report.notes[(g.name, kind, event_id)] = note
    wanted = {e for ids in report.examples.values() for e in ids}
    report.traces = await traces(deployment, facts, index, wanted)
    return report


def _totals(journal: Journal) -> dict[str, int]:
    counts = journal.counts()
    return {
        "txn_ok": counts["ok"],
        "txn_failed": counts["failed"],
        "txn_doomed": counts["doomed"],
        "txn_unknown": counts["was_unknown"],
        "unknown_committed": sum(t.was_unknown and t.status == "ok" for t in journal.txns),
        "events_committed": sum(1 for _ in journal.events("ok")),
        "events_failed": sum(1 for _ in journal.events("failed")),
    }
