"""Redis side of the relay: XADD claimed rows to their topic streams, notice Redis resets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import hiredis
from redis.exceptions import OutOfMemoryError, ResponseError

from conveyor import redis_client, wire
from conveyor.layouts import Layouts
from relay.cluster_send import ClusterSender, owner
from relay.errors import NotReplicated, XaddRejected
from relay.store import Row

log = logging.getLogger(__name__)

_XADD = (b"XADD",)
_HEAD = (b"*", wire.F_VERSION, wire.LAYOUT_VERSION, wire.F_EVENT_ID)
_TYPE, _AGG, _TP, _EV = wire.F_EVENT_TYPE, wire.F_AGGREGATE_ID, wire.F_TRACEPARENT, wire.F_EVENT
# hiredis' stub declares a one-element tuple; it packs any tuple of arguments.
_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)


class Publisher(Protocol):
    """What the forwarder needs from the stream side (real: StreamPublisher)."""

    def stream_key(self, topic: str, aggregate_id: str = "") -> str:
        """The stream key events of `topic` (and, for a partitioned topic, of `aggregate_id`)
        are appended to."""

    async def publish(self, rows: Sequence[Row]) -> dict[str, int]:
        """Append every row to its topic stream; return entries added per stream key. Raises
        XaddRejected when Redis answered some XADDs with an error reply (naming the rows it
        appended), anything else when the outcome of some is unknown (a connection lost)."""

    async def check_reset(self) -> ResetReport | None:
        """Compare the run ids of the servers holding the streams with the last ones seen;
        report what a restart or a failover lost."""


@dataclass(frozen=True, slots=True)
class ResetReport:
    """A Redis restart the publisher noticed, and the streams it had written that lost entries."""

    old_run_id: str
    new_run_id: str
    lost_streams: tuple[str, ...] = field(default=())


class StreamPublisher:
    """Pipelined XADD of outbox rows, one entry per row, fields as conveyor.wire lays them out.

    With `wait_replicas` N > 0, each batch's XADDs are followed, on the same connection (per
    master, on a cluster), by `WAIT N wait_timeout`: a batch fewer than N replicas acknowledged
    in time raises NotReplicated (`on_unreplicated` is called first), so its rows stay
    unpublished and are retried.
    """

    def __init__(
        self,
        client: Any,
        prefix: str = wire.DEFAULT_PREFIX,
        *,
        timeout: float = redis_client.COMMAND_TIMEOUT,
        layouts: Layouts | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        on_unreplicated: Callable[[NotReplicated], None] | None = None,
    ) -> None:
        self._client = client
        self._timeout = timeout + (wait_timeout if wait_replicas else 0.0)
        """Bound on one round trip: a batch's XADDs (and WAIT), or the reset check's replies."""
        self._replicas = wait_replicas
        self._wait_seconds = wait_timeout
        self._wait = (
            _pack((b"WAIT", wait_replicas, max(1, round(wait_timeout * 1000))))
            if wait_replicas
            else None
        )
        self._on_unreplicated = on_unreplicated
        self._cluster = (
            ClusterSender(client, self._wait, wait_replicas, wait_timeout)
            if redis_client.is_cluster(client)
            else None
        )
        self._prefix = wire.validate_prefix(prefix)
        self._keys: dict[str, str] = {}
        """Unpartitioned topic -> its stream key; a partitioned topic is never in it."""
        self._partitions: dict[str, list[str]] = {
            topic: [k.events for k in wire.topic_keys(topic, self._prefix, layout.partitions)]
            for topic, layout in (layouts or {}).items()
        }
        """Partitioned topic -> the stream key of each partition."""
        self._written: set[str] = set()
        """Partition streams appended to, for the reset check."""
        self._seen: dict[str, str] = {}
        """The last check's `_servers()`: a stream whose holder changed was reset."""
        self._added: dict[str, int] = {}
        """Stream key -> entries ever added to it (XINFO STREAM entries-added) that a restart
        must not lose: trims never lower it, a Redis that lost data reports less. Without WAIT,
        the last check's count; with it, a count its replicas are known to hold (below)."""
        self._pending: dict[str, int] = {}
        """With WAIT: the last check's counts. They may include entries of batches that failed
        their WAIT (this relay's or another's; their rows are retried, so a failover may drop
        them without losing an event): a count becomes `_added` only once a batch sent after
        it, to that stream, passed its WAIT (which covers every write before it) and the next
        check finds the same server (run ids) as the one that counted it."""
        self._witnessed: dict[str, int] = {}
        """Stream key -> entries such batches appended to it since the last check: the replicas
        hold those too, so `_added` becomes the count (0 for a stream it had not counted) plus
        them, and a relay gone idle after its last batches still has them in its baseline."""
        self._counted = 0
        """Bumped as a check begins and as it has counted: a batch that finds it unchanged
        when its WAIT passes was sent after the count and before the next check."""

    def stream_key(self, topic: str, aggregate_id: str = "") -> str:
        key = self._keys.get(topic)
        if key is None:
            partitions = self._partitions.get(topic)
            if partitions is not None:
                key = partitions[wire.partition_of(aggregate_id, len(partitions))]
                self._written.add(key)
                return key
            key = self._keys[topic] = wire.Keys(topic, self._prefix).events
        return key

    async def publish(self, rows: Sequence[Row]) -> dict[str, int]:
        # Packed here, in C, and sent as one write: redis-py's pipeline spends about twice as
        # much CPU per entry as Redis needs for the XADD itself.
        counts: dict[str, int] = {}
        keys, pack = self._keys, _pack
        counted = self._counted
        commands = []
        args: tuple[Any, ...]
        for _id, event_id, topic, event_type, aggregate_id, traceparent, payload in rows:
            key = keys.get(topic) or self.stream_key(topic, aggregate_id)
            counts[key] = counts.get(key, 0) + 1
            if traceparent:
                args = (*_XADD, key, *_HEAD, str(event_id), _TYPE, event_type, _AGG, aggregate_id,
                        _TP, traceparent, _EV, payload)  # fmt: skip
            else:
                args = (*_XADD, key, *_HEAD, str(event_id), _TYPE, event_type, _AGG, aggregate_id,
                        _EV, payload)  # fmt: skip
            commands.append(pack(args))
        try:
            if self._cluster is None:
                sent = self._send(b"".join(commands), len(commands))
            else:
                sent = self._cluster.send(commands)
            failed = await redis_client.within(self._timeout, sent, "XADD")
        except NotReplicated as exc:
            if self._on_unreplicated is not None:
                self._on_unreplicated(exc)
            raise
        if self._wait is not None and counted == self._counted:
            self._witness(rows, counts, failed)
        if failed:
            refusals = [e for e in failed.values() if isinstance(e, OutOfMemoryError)]
            error = refusals[0] if refusals else next(iter(failed.values()))
            accepted = frozenset(row[0] for i, row in enumerate(rows) if i not in failed)
            raise XaddRejected(
                error, rejected=len(failed), accepted=accepted, out_of_memory=bool(refusals)
            ) from error
        return counts

    def _witness(
        self, rows: Sequence[Row], counts: dict[str, int], failed: dict[int, ResponseError]
    ) -> None:
        """A batch sent after the last count passed its WAIT: the replicas hold what that check
        counted, and this batch's entries. WAIT waits for the connection's last write: a stream
        whose every XADD was refused vouches for nothing."""
        accepted = counts
        if failed:
            accepted = dict(counts)
            for i in failed:
                topic, aggregate_id = rows[i][2], rows[i][4]
                accepted[self._keys.get(topic) or self.stream_key(topic, aggregate_id)] -= 1
        witnessed = self._witnessed
        for key, n in accepted.items():
            if n:
                witnessed[key] = witnessed.get(key, 0) + n

    async def _send(self, packed: bytes, replies: int) -> dict[int, ResponseError]:
        """Send pipelined commands and read every reply; return the error replies by index."""
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        failed: dict[int, ResponseError] = {}
        wait = self._wait
        try:
            # A failure or cancellation mid-way disconnects the connection (redis-py does, on
            # any exception), so no reply is left unread on it.
            await conn.send_packed_command(
                packed if wait is None else packed + wait, check_health=False
            )
            for i in range(replies):
                try:
                    await conn.read_response(disable_decoding=True)
                except ResponseError as exc:
                    failed[i] = exc
            if wait is not None:
                acked = int(await conn.read_response())
                if acked < self._replicas:
                    raise NotReplicated(
                        node=f"{conn.host}:{conn.port}",
                        wanted=self._replicas,
                        acknowledged=acked,
                        seconds=self._wait_seconds,
                    )
        finally:
            await pool.release(conn)
        return failed

    async def check_reset(self) -> ResetReport | None:
        # Witnesses are the batches sent after the last count that passed their WAIT before
        # this check began: one still in flight may have gone to a master promoted since.
        witnessed, self._witnessed = self._witnessed, {}
        self._counted += 1
        servers = await redis_client.within(self._timeout, self._servers(), "INFO")
        added = await redis_client.within(self._timeout, self._entries_added(), "XINFO STREAM")
        old, self._seen = self._seen, servers
        changed = sorted(k for k, server in servers.items() if old.get(k, server) != server)
        before = self._added
        if self._wait is None:
            self._added = added
        else:
            if not changed:
                pending = self._pending
                before.update((k, pending.get(k, 0) + n) for k, n in witnessed.items())
            self._pending, self._witnessed = added, {}
            self._counted += 1
        if not changed:
            return None
        # Lost: gone, or fewer entries ever added than before the restart. Entries appended
        # since the restart and before this look (this relay's backlog, another relay's) make
        # up for lost ones: a lost tail (appendfsync everysec, a failover) often hides behind
        # them. `conveyor verify` finds it.
        lost = [k for k, n in sorted(before.items()) if added.get(k, 0) < n]
        if self._wait is not None:  # a loss is reported once
            self._added = {k: min(n, added.get(k, 0)) for k, n in before.items()}
        was = ",".join(sorted({old[k] for k in changed}))
        return ResetReport(was, ",".join(sorted({servers[k] for k in changed})), tuple(lost))

    async def _servers(self) -> dict[str, str]:
        """Who holds the relay's streams: on one server, its run id (under the key ""); on a
        cluster, each stream key's master as `node=run id`, so a restart or a failover of one
        shows, and a stream first written on another master does not."""
        client = self._client
        if self._cluster is None:
            info = await client.info("server")
            return {"": str(info["run_id"])}
        await client.initialize()
        keys = (*self._keys.values(), *self._written)
        found = await self._masters(keys)
        if found is None:
            # A slot map nothing refreshed (a relay without batches meets no MOVED) names a
            # master failed over since, back as a replica with its run id, which would hide the
            # failover: load the map again.
            await client.nodes_manager.initialize()
            found = await self._masters(keys)
            if found is None:
                raise redis_client.ClusterUnavailable("the slot map names a replica: failing over")
        return found

    async def _masters(self, keys: Sequence[str]) -> dict[str, str] | None:
        """Each key's master, as the client's slot map says, as `node=run id`; None when the
        map names a node that is not a master."""
        client = self._client
        found: dict[str, str] = {}
        run_ids: dict[str, str] = {}
        for key in keys:
            node = owner(client, key)
            if node.name not in run_ids:
                info = await client.info("server", "replication", target_nodes=node)
                if info.get("role") != "master":
                    return None
                run_ids[node.name] = f"{node.name}={info['run_id']}"
            found[key] = run_ids[node.name]
        return found

    async def replicas(self) -> dict[str, int]:
        """Connected replicas (INFO replication) of the server, or of each cluster master."""
        client = self._client
        if self._cluster is None:
            info = await redis_client.within(self._timeout, client.info("replication"), "INFO")
            return {"redis": int(info.get("connected_slaves", 0))}
        await client.initialize()
        found = {}
        for node in client.get_primaries():
            info = await redis_client.within(
                self._timeout, client.info("replication", target_nodes=node), "INFO"
            )
            found[node.name] = int(info.get("connected_slaves", 0))
        return found

    async def _entries_added(self) -> dict[str, int]:
        added: dict[str, int] = {}
        for key in (*self._keys.values(), *self._written):
            try:
                info = await self._client.xinfo_stream(key)
            except ResponseError:  # no such key
                continue
            added[key] = int(info.get("entries-added", info.get("length", 0)))
        return added
