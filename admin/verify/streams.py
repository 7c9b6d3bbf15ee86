"""The Redis side of verifying one topic: its groups' positions, the entries carrying given
events (read in pages, never the whole stream at once), pending lists and dead-letter entries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import ResponseError

from conveyor import redis_client, wire
from conveyor.entry_ids import EntryId
from conveyor.replies import text

SCAN_PAGE: Final = 1000
"""Entries read per XRANGE."""
PENDING_BATCH: Final = 500
"""XPENDING look-ups sent per round trip."""


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One group of a stream, as XINFO GROUPS shows it."""

    name: str
    last_delivered: EntryId
    pending: int
    lag: int | None
    """Entries not yet delivered; None when Redis cannot tell (after deletions)."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream as XINFO STREAM shows it."""

    length: int
    entries_added: int | None
    """Entries ever added to the stream since it was created; None before Redis 7."""
    first_entry: EntryId | None
    last_entry: EntryId | None

    def created_since(self, published: int) -> bool:
        """Whether the stream was created anew after events it misses were added: nothing was
        ever trimmed or deleted from it, or fewer entries were added to it than the `published`
        events that each were (False before Redis 7, which does not count them)."""
        added = self.entries_added
        return added is not None and (added == self.length or added < published)


class TopicStream:
    """The event stream and dead-letter stream of one topic."""

    def __init__(self, client: Any, keys: wire.Keys) -> None:
        self._client = client
        self.keys = keys

    async def _call(self, command: Awaitable[Any]) -> Any:
        async with asyncio.timeout(redis_client.COMMAND_TIMEOUT):
            return await command

    async def groups(self) -> dict[str, GroupInfo] | None:
        """The stream's groups by name; None when the stream does not exist."""
        try:
            infos = await self._call(self._client.xinfo_groups(self.keys.events))
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        out = {}
        for info in infos:
            name = text(info["name"])
            lag = info.get("lag")
            out[name] = GroupInfo(
                name,
                EntryId.parse(info["last-delivered-id"]),
                int(info["pending"]),
                None if lag is None else int(lag),
            )
        return out

    async def info(self) -> StreamInfo | None:
        """The stream's length, entries ever added, first and last entry; None when it does
        not exist."""
        try:
            reply = await self._call(self._client.xinfo_stream(self.keys.events))
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        added = reply.get("entries-added")
        return StreamInfo(
            length=int(reply["length"]),
            entries_added=None if added is None else int(added),
            first_entry=_entry_id(reply.get("first-entry")),
            last_entry=_entry_id(reply.get("last-entry")),
        )

    async def entries_of(
        self,
        start: EntryId,
        end: EntryId,
        wanted: Collection[str],
        on_page: Callable[[int], None] | None = None,
    ) -> dict[str, list[EntryId]]:
        """Event id -> entry ids of the entries from `start` to `end` carrying one of `wanted`,
        read in pages."""
        found: dict[str, list[EntryId]] = {}
        if not wanted:
            return found
        async for page in self._pages(self.keys.events, str(start), str(end)):
            for entry_id, fields in page:
                event_id = _field(fields, wire.F_EVENT_ID)
                if event_id is not None and event_id in wanted:
                    found.setdefault(event_id, []).append(EntryId.parse(entry_id))
            if on_page is not None:
                on_page(len(page))
        return found

    async def _pages(self, key: str, start: str, end: str) -> AsyncIterator[list[Any]]:
        while True:
            page = await self._call(self._client.xrange(key, start, end, count=SCAN_PAGE))
            if page:
                yield page
            if len(page) < SCAN_PAGE:
                return
            start = "(" + text(page[-1][0])

    async def pending(self, group: str, entries: Iterable[EntryId]) -> set[EntryId]:
        """Those of `entries` in `group`'s pending list: one exact XPENDING per entry, pipelined
        (a range with a COUNT could miss some among many others)."""
        todo = list(entries)
        out: set[EntryId] = set()
        for at in range(0, len(todo), PENDING_BATCH):
            pipe = self._client.pipeline(transaction=False)
            for entry in todo[at : at + PENDING_BATCH]:
                pipe.xpending_range(self.keys.events, group, str(entry), str(entry), 1)
            try:
                replies = await self._call(pipe.execute())
            except ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    return out  # the group went: nothing of it is pending
                raise
            out.update(EntryId.parse(r["message_id"]) for rows in replies for r in rows)
        return out

    async def dead_lettered(self, group: str, start: EntryId, wanted: Collection[str]) -> set[str]:
        """Those of `wanted` that `group` moved to the dead-letter stream from `start` on (their
        catalog rows may not be written yet: the consumer or its reconciler adds them)."""
        found: set[str] = set()
        if not wanted:
            return found
        async for page in self._pages(self.keys.dlq, str(start), "+"):
            for _, fields in page:
                event_id = _field(fields, wire.F_EVENT_ID)
                if (
                    event_id is not None
                    and event_id in wanted
                    and group == _field(fields, wire.DL_GROUP)
                ):
                    found.add(event_id)
        return found


def _entry_id(entry: Any) -> EntryId | None:
    """The id of an XINFO STREAM first or last entry; None for none."""
    return None if not entry else EntryId.parse(entry[0])


def _field(fields: dict[Any, Any], name: bytes) -> str | None:
    value = fields.get(name, fields.get(name.decode()))
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
