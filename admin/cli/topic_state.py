"""What `conveyor topic` reads and checks: a deployment's layouts, its running relays and
consumers, and whether a topic's streams still hold entries a group has not acknowledged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.exceptions import ResponseError

from admin.catalog import dead_letters
from admin.catalog import layouts as catalog_layouts
from admin.catalog.processes import RegisteredProcess, list_processes
from conveyor import layouts, wire
from conveyor.layouts import Layout
from conveyor.replies import text


@dataclass(frozen=True, slots=True)
class GroupState:
    """One consumer group on one stream."""

    group: str
    pending: int
    """Delivered, not acknowledged."""
    undelivered: int
    """After the group's last delivered entry (up to a page of them counted)."""
    retry_entries: int
    """Entries in the group's retry stream of this partition (retries waiting, reprocesses)."""


@dataclass(frozen=True, slots=True)
class StreamState:
    """One stream of a topic (the whole topic, or a partition)."""

    keys: wire.Keys
    length: int
    groups: tuple[GroupState, ...] = ()
    dead_letters: int = 0

    @property
    def unacknowledged(self) -> int:
        """Entries some group has still to handle; a stream no group reads counts all its
        entries (a group created later would start on them)."""
        if not self.groups:
            return self.length
        return sum(g.pending + g.undelivered + g.retry_entries for g in self.groups)


@dataclass(frozen=True, slots=True)
class TopicState:
    topic: str
    layout: Layout | None
    streams: tuple[StreamState, ...] = field(default=())


_COUNT_PAGE = 10_000
_DLQ_PAGE = 1_000


async def read_layouts(pool: asyncpg.Pool, prefix: str) -> dict[str, Layout]:
    return await catalog_layouts.layouts(pool, prefix)


async def alive(pool: asyncpg.Pool, prefix: str) -> list[RegisteredProcess]:
    """The relays and consumers of the deployment whose heartbeat is recent (not absent)."""
    return [p for p in await list_processes(pool, prefix) if not p.absent]


async def topic_state(
    client: Any, prefix: str, topic: str, layouts_now: layouts.Layouts
) -> TopicState:
    """The topic's streams (as its current layout has them) with their groups' figures."""
    found = [
        await stream_state(client, keys) for keys in layouts.streams(topic, prefix, layouts_now)
    ]
    return TopicState(topic, layouts_now.get(topic), tuple(found))


async def stream_state(client: Any, keys: wire.Keys) -> StreamState:
    """Length, dead letters and each group's pending, undelivered and retry entries."""
    length = int(await client.xlen(keys.events))
    dead = int(await client.xlen(keys.dlq))
    try:
        infos = await client.xinfo_groups(keys.events)
    except ResponseError:  # no such key
        infos = []
    groups = []
    for info in infos:
        name = text(info["name"])
        lag = info.get("lag")
        if lag is None:  # Redis cannot tell after deletions: count what is after last-delivered
            last = "(" + text(info["last-delivered-id"])
            lag = len(await client.xrange(keys.events, min=last, max="+", count=_COUNT_PAGE))
        retry = int(await client.xlen(keys.retry(name)))
        groups.append(GroupState(name, int(info["pending"]), int(lag), retry))
    return StreamState(keys, length, tuple(sorted(groups, key=lambda g: g.group)), dead)


async def unrecorded(pool: asyncpg.Pool, client: Any, keys: wire.Keys) -> list[str]:
    """Entry ids of the dead letters in `keys.dlq` not yet in the catalog (written while
    PostgreSQL was away; a consumer's reconciler of that stream records them)."""
    out: list[str] = []
    start = "-"
    while page := await client.xrange(keys.dlq, min=start, max="+", count=_DLQ_PAGE):
        ids = [text(i) for i, _ in page]
        known = await dead_letters.recorded(pool, keys.dlq, ids)
        out += [i for i in ids if i not in known]
        if len(page) < _DLQ_PAGE:
            break
        start = "(" + ids[-1]
    return out


def unrecorded_refusal(
    topic: str, old: int | None, new: int | None, found: dict[str, list[str]]
) -> str | None:
    """Why the topic's streams must not change while dead letters of them are unrecorded."""
    if not found:
        return None
    listed = ", ".join(f"{k} ({len(ids)}, e.g. {ids[0]})" for k, ids in list(found.items())[:5])
    return (
        f"refusing to change topic {topic} from {layout_words(old)} to {layout_words(new)}: "
        f"dead letters of its streams are not in the catalog yet: {listed}; start a consumer "
        f"of the topic until `conveyor dlq list --stream {topic}` shows them (its reconciler "
        "records them), then stop it; --force changes it anyway (no consumer of the new layout "
        "records them)"
    )


def layout_words(partitions: int | None) -> str:
    """`unpartitioned`, `1 partition` or `N partitions`."""
    if partitions is None:
        return "unpartitioned"
    return f"{partitions} partition{'' if partitions == 1 else 's'}"


def refusal(
    topic: str,
    old: int | None,
    new: int | None,
    running: Sequence[RegisteredProcess],
    streams: Sequence[StreamState],
) -> str | None:
    """Why the partition count of `topic` (None: unpartitioned) must not change now, or None."""
    change = f"topic {topic} from {layout_words(old)} to {layout_words(new)}"
    if running:
        relays = sorted(p.name for p in running if p.role == "relay")
        consumers = sorted(f"{p.group}/{p.name}" for p in running if p.role != "relay")
        who = []
        if relays:
            who.append(f"relay{'s' if len(relays) > 1 else ''} {', '.join(relays[:5])}")
        if consumers:
            who.append(f"consumer{'s' if len(consumers) > 1 else ''} {', '.join(consumers[:5])}")
        return (
            f"refusing to change {change} while {' and '.join(who)} of the deployment "
            "run (heartbeat within 30s): stop every relay, let the consumers drain, stop them, "
            "then change it (docs/operations.md, Partitioned topics); --force changes it anyway"
        )
    waiting = [s for s in streams if s.unacknowledged]
    if waiting:
        listed = ", ".join(f"{s.keys.events} ({s.unacknowledged})" for s in waiting[:5])
        return (
            f"refusing to change {change}: its streams still hold entries not every group "
            f"acknowledged: {listed}; start the consumers until `conveyor topic show {topic}` "
            "shows 0 waiting, then stop them (docs/operations.md, Partitioned topics); --force "
            "changes it anyway (those entries stay where they are, read by nobody)"
        )
    return None
