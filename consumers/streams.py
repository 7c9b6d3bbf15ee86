"""Redis side of one (topic, group): read, reclaim, acknowledge, dead-letter. No command spans
keys of different hash slots: every key here shares the topic's hash tag."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import OutOfMemoryError, ResponseError

from consumers.deliveries import Entry, Fields
from consumers.errors import GroupLost
from conveyor import redis_client, wire
from conveyor.replies import text


class Holding(Protocol):
    """Entries a consumer holds (waiting out a retry, say), by stream and entry id."""

    def __contains__(self, key: tuple[str, str], /) -> bool: ...


class TopicStreams:
    """The topic's event stream, the group's retry stream and the dead-letter stream."""

    def __init__(
        self,
        client: Any,
        keys: wire.Keys,
        group: str,
        consumer: str,
        *,
        timeout: float = redis_client.COMMAND_TIMEOUT,
    ) -> None:
        self._client = client
        self._timeout = timeout
        """Bound on one round trip (beyond the block of a blocking read)."""
        _allow_raw_xreadgroup(client)
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.retry = keys.retry(group)
        self._ack_and_delete = client.register_script(_ACK_AND_DELETE)
        self._move = client.register_script(_MOVE)

    async def _call(self, coro: Any, what: str = "", *, blocks: float = 0.0) -> Any:
        """The reply to `coro`; NoReply when Redis has not sent it within the timeout (plus
        `blocks`, the seconds a blocking command may wait for data), GroupLost when the group
        or stream is gone."""
        try:
            return await redis_client.within(self._timeout + blocks, coro, what)
        except ResponseError as exc:
            # NOGROUP: the group or stream is gone; UNBLOCKED: it went while we were blocked.
            if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise GroupLost(self.keys.events, self.group) from exc
            raise

    async def ensure_groups(self, start: str = "0") -> bool:
        """Create the group on the event stream at `start` (`0`: everything the stream holds,
        the default, as a group recreated after a loss must never skip; `$`: entries appended
        from now on; or an entry id) and on the retry stream at 0; a group that exists keeps its
        place. True when the event stream's group had to be created."""
        created = False
        for key, at in ((self.keys.events, start), (self.retry, "0")):
            try:
                await redis_client.within(
                    self._timeout,
                    self._client.xgroup_create(key, self.group, id=at, mkstream=True),
                    "XGROUP CREATE",
                )
                created = created or key == self.keys.events
            except ResponseError as exc:
                if str(exc).startswith("BUSYGROUP"):
                    continue
                # Out of memory, Redis refuses XGROUP CREATE before it looks: a group that
                # exists needs nothing, and reads and acknowledgements need no memory.
                if not (isinstance(exc, OutOfMemoryError) and await self._has_group(key)):
                    raise
        return created

    def sibling(self, partition: int | None) -> TopicStreams:
        """The same group and member on another stream of the topic: its unpartitioned one
        (None), or partition `partition`."""
        prefix = self.keys.events.split(":{", 1)[0]  # a key prefix holds no brace
        keys = wire.Keys(self.keys.topic, prefix, partition)
        return TopicStreams(self._client, keys, self.group, self.consumer, timeout=self._timeout)

    async def standing(self) -> dict[str, Any] | None:
        """The group on the event stream as XINFO GROUPS shows it (`last-delivered-id`,
        `pending`, `lag`, ...; names as text), or None when it has none."""
        try:
            groups = await self._call(self._client.xinfo_groups(self.keys.events))
        except ResponseError:  # no such key
            return None
        for g in groups:
            if text(g["name"]) == self.group:
                return {text(k): text(v) if isinstance(v, bytes) else v for k, v in g.items()}
        return None

    async def _has_group(self, key: str) -> bool:
        try:
            groups = await self._call(self._client.xinfo_groups(key))
        except ResponseError:  # no such key
            return False
        return any(text(g["name"]) == self.group for g in groups)

    async def read(self, stream: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries of `stream` for this consumer (XREADGROUP >)."""
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", stream, ">"]
        reply = await self._call(
            self._client.execute_command(*args, **{_RAW: True}),
            "XREADGROUP",
            blocks=(block_ms or 0) / 1000,
        )
        if not reply:
            return []
        # RESP3 replies with a map of stream -> entries, RESP2 with a list of pairs.
        items = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return [Entry(stream, eid.decode(), fields) for eid, fields in items]

    async def autoclaim(
        self, stream: str, min_idle_ms: int, count: int, start: str = "0-0"
    ) -> tuple[list[Entry], list[str], str]:
        """Entries idle on other consumers longer than `min_idle_ms`, now ours, with their
        delivery counts as attempts; ids that were deleted or trimmed while pending; and the
        cursor to continue from ("0-0" once the pending list has been walked)."""
        reply = await self._call(
            self._client.xautoclaim(
                stream, self.group, self.consumer, min_idle_ms, start, count=count
            ),
            "XAUTOCLAIM",
        )
        claimed: Sequence[tuple[bytes, Fields | None]] = reply[1]
        deleted = [text(i) for i in (reply[2] if len(reply) > 2 else [])]
        entries = [Entry(stream, text(eid), fields) for eid, fields in claimed]
        if entries:
            counts = await self._delivery_counts(stream, [e.entry_id for e in entries])
            # An id no longer pending was acknowledged by its previous owner meanwhile: done.
            entries = [e for e in entries if e.entry_id in counts]
            for e in entries:
                e.attempt = counts[e.entry_id]
        return entries, deleted, text(reply[0])

    async def reclaim_mine(self, stream: str, count: int, holding: Holding) -> list[Entry]:
        """Entries pending on this consumer that it does not hold (`holding` says which it does,
        by stream and entry id): delivered by reads whose replies never arrived. Claimed again,
        which counts a delivery, with their attempt numbers; up to `count` of them. An entry
        another member claims between the XPENDING and the XCLAIM is left to it: the XCLAIM's
        min-idle is the least idle time the XPENDING saw, which such a claim resets."""
        pending = await self._call(
            self._client.xpending_range(
                stream, self.group, "-", "+", count, consumername=self.consumer
            ),
            "XPENDING",
        )
        mine = [p for p in pending if (stream, text(p["message_id"])) not in holding]
        if not mine:
            return []
        counts = {text(p["message_id"]): int(p["times_delivered"]) for p in mine}
        idle = min(int(p["time_since_delivered"]) for p in mine)
        reply = await self._call(
            self._client.xclaim(stream, self.group, self.consumer, idle, list(counts)), "XCLAIM"
        )
        entries = [Entry(stream, text(eid), fields) for eid, fields in reply or ()]
        for e in entries:
            e.attempt = counts[e.entry_id] + 1
        return entries

    async def _delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        """Times each of `ids` has been delivered, exactly: one XPENDING per id, pipelined into
        one round trip. (A single XPENDING over the ids' range with a COUNT would miss ids when
        this consumer holds many other pending entries in that range, and a missed id would
        start again at attempt 1, escaping the attempts cap.)"""
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(stream, self.group, entry_id, entry_id, 1)
        replies = await self._call(pipe.execute())
        return {text(r["message_id"]): int(r["times_delivered"]) for rows in replies for r in rows}

    async def pending_mine(self, stream: str, start: str, count: int) -> list[str]:
        """Ids of up to `count` entries of `stream` pending on this consumer from `start` (an id,
        or `(id` to start after it), in stream order; nothing is claimed or counted."""
        rows = await self._call(
            self._client.xpending_range(
                stream, self.group, start, "+", count, consumername=self.consumer
            ),
            "XPENDING",
        )
        return [text(r["message_id"]) for r in rows]

    async def entries(self, stream: str, ids: list[str]) -> tuple[list[Entry], list[str]]:
        """The entries `ids` of `stream` as the stream holds them (one XRANGE each, pipelined:
        nothing delivered or counted), and the ids deleted or trimmed meanwhile."""
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(stream, entry_id, entry_id)
        found: list[Entry] = []
        gone: list[str] = []
        for entry_id, rows in zip(ids, await self._call(pipe.execute()), strict=True):
            if rows:
                found.append(Entry(stream, entry_id, rows[0][1]))
            else:
                gone.append(entry_id)
        return found, gone

    async def claim(self, stream: str, entry_id: str, min_idle_ms: int) -> Entry | None:
        """Take `entry_id` back for another attempt unless someone else touched it since; None
        when it is no longer ours (another consumer reclaimed it, or it was deleted)."""
        reply = await self._call(
            self._client.xclaim(stream, self.group, self.consumer, min_idle_ms, [entry_id])
        )
        for eid, fields in reply or ():
            return Entry(stream, text(eid), fields)
        return None

    async def pending_on_others(self, stream: str, page: int) -> set[str]:
        """Ids of the group's entries of `stream` pending on consumers other than this one."""
        summary = await self._call(self._client.xpending(stream, self.group), "XPENDING")
        others = [text(c["name"]) for c in summary.get("consumers") or ()]
        ids: set[str] = set()
        for name in (n for n in others if n != self.consumer):
            start = "-"
            while True:
                rows = await self._call(
                    self._client.xpending_range(stream, self.group, start, "+", page, name),
                    "XPENDING",
                )
                ids.update(text(r["message_id"]) for r in rows)
                if len(rows) < page:
                    break
                start = "(" + text(rows[-1]["message_id"])
        return ids

    async def claim_ids(self, stream: str, ids: list[str]) -> list[Entry]:
        """Take `ids` over whoever holds them, with their delivery counts as attempts; those
        acknowledged or deleted meanwhile are left out."""
        if not ids:
            return []
        reply = await self._call(self._client.xclaim(stream, self.group, self.consumer, 0, ids))
        entries = [Entry(stream, text(eid), fields) for eid, fields in reply or () if fields]
        counts = await self._delivery_counts(stream, [e.entry_id for e in entries])
        entries = [e for e in entries if e.entry_id in counts]
        for e in entries:
            e.attempt = counts[e.entry_id]
        return entries

    async def touch(self, stream: str, ids: list[str], min_idle_ms: int) -> set[str]:
        """Reset the idle time of entries still ours (JUSTID: no delivery counted), so no other
        consumer reclaims them while they wait out their backoff; return the ids still ours."""
        reply = await self._call(
            self._client.xclaim(stream, self.group, self.consumer, min_idle_ms, ids, justid=True)
        )
        return {text(i) for i in reply or ()}

    async def exists(self, stream: str, entry_id: str) -> bool:
        """Whether the entry is still in the stream."""
        return bool(await self._call(self._client.xrange(stream, entry_id, entry_id)))

    async def ack(self, entries: Sequence[Entry]) -> None:
        """Acknowledge entries; those of the retry stream are deleted too (only we read it)."""
        events = self.keys.events
        if not entries:
            return
        if all(e.stream == events for e in entries):  # the usual case: one XACK
            ids = [e.entry_id for e in entries]
            await self._call(self._client.xack(events, self.group, *ids), "XACK")
            return
        by_stream: dict[str, list[str]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        for stream, ids in by_stream.items():
            if stream == self.retry:
                # A script rather than MULTI: Redis out of memory refuses every command of a
                # MULTI, but runs a script whose commands add nothing.
                for start in range(0, len(ids), _SCRIPT_IDS):
                    chunk = ids[start : start + _SCRIPT_IDS]
                    await self._call(self._ack_and_delete(keys=[stream], args=[self.group, *chunk]))
            else:
                await self._call(self._client.xack(stream, self.group, *ids))

    async def dead_letters_after(self, after: str | None, count: int) -> list[tuple[str, Fields]]:
        """Up to `count` entries of the dead-letter stream after entry id `after` (from the
        start when None), in order."""
        page = await self._call(
            self._client.xrange(
                self.keys.dlq, min="-" if after is None else f"({after}", max="+", count=count
            )
        )
        return [(text(i), f) for i, f in page]

    async def delete_dead_letters(self, ids: list[str]) -> None:
        """Remove entries from the dead-letter stream."""
        await self._call(self._client.xdel(self.keys.dlq, *ids))

    async def dead_letter(self, entry: Entry, fields: dict[bytes, bytes | str]) -> str | None:
        """Append `fields` to the dead-letter stream and acknowledge `entry`, atomically, if the
        entry is still pending on this consumer; the dead letter's entry id, or None when it is
        not (another member claimed it meanwhile: a takeover, an idle claim; or it is
        acknowledged already): then nothing is written."""
        flat: list[Any] = [x for kv in fields.items() for x in kv]
        delete = "1" if entry.stream == self.retry else "0"
        args = [self.group, self.consumer, entry.entry_id, delete, *flat]
        reply = await self._call(
            self._move(keys=[entry.stream, self.keys.dlq], args=args), "dead letter"
        )
        return None if reply is None else text(reply)


_MOVE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
return id
"""
"""Moves an entry to the dead-letter stream (XADD there, XACK, XDEL from the retry stream)
only while it is pending on this consumer (KEYS: stream, dead-letter stream; ARGV: group,
consumer, entry id, '1' to delete it, the dead letter's fields and values). A script, as the
ack of the retry stream: nothing is written when Redis out of memory refuses the XADD."""
_ACK_AND_DELETE = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""
"""Acknowledges entries of the retry stream and deletes them, atomically (ARGV: group, ids)."""
_SCRIPT_IDS = 1000
"""Entry ids per call of a script (Lua's unpack has a limit of a few thousand)."""

_RAW = "conveyor_raw"
"""Option asking for XREADGROUP's reply as Redis sent it: building redis-py's intermediate
tuples for a 1,000-entry read costs more than building the entries directly."""


def _allow_raw_xreadgroup(client: Any) -> None:
    """Let XREADGROUP calls passing the `_RAW` option skip the client's reply parsing; every
    other call parses as before."""
    standard = client.response_callbacks.get("XREADGROUP")
    if getattr(standard, "conveyor_raw", False):
        return

    def parse(response: Any, **options: Any) -> Any:
        if options.get(_RAW) or standard is None:
            return response
        return standard(response, **options)

    parse.conveyor_raw = True  # type: ignore[attr-defined]
    client.set_response_callback("XREADGROUP", parse)
