"""The relay's reset check under `--wait-replicas` when two relays share a stream: a failover
that drops only entries of batches that failed their WAIT loses no event (their rows are
retried), so neither relay may say `REDIS DATA LOSS` — also the relay that counted the other's
unreplicated entries, and also after its own batches reached the promoted master first."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import pytest
import redis

from conveyor import redis_client, wire
from relay.errors import NotReplicated
from relay.publisher import StreamPublisher
from relay.store import Row
from tests.cluster import RedisCluster, key_slot
from tests.cluster_tests.support import clog
from tests.reset_support import check_until_answered, rows

pytestmark = pytest.mark.slow


async def _publish_until_accepted(publisher: StreamPublisher, batch: list[Row]) -> None:
    """Retry a batch as the forwarder does, while the client finds the promoted master."""
    for _ in range(100):
        try:
            await publisher.publish(batch)
        except (redis_client.ClusterUnavailable, NotReplicated, redis.RedisError, OSError):
            await asyncio.sleep(0.1)
        else:
            return
    raise AssertionError("no batch accepted after the failover")


async def test_failover_dropping_only_unreplicated_entries_is_no_data_loss(
    cluster: RedisCluster,
) -> None:
    prefix, topic = f"t{uuid.uuid4().hex[:12]}", "waited"
    stream = wire.Keys(topic, prefix).events
    master = cluster.master_of(stream)
    replica = cluster.replica_of(master)
    # The clients start at a master that keeps running.
    url = next(n for n in cluster.master_nodes() if n is not master).url
    url = url.replace("redis://", "redis+cluster://", 1)
    clients = [redis_client.connect(url) for _ in range(3)]
    # `a` checks right after the failover; `b` retries its failed batch on the promoted master
    # first; `other` only publishes (another relay, whose entries both count).
    a, b, other = (StreamPublisher(c, prefix, wait_replicas=1, wait_timeout=0.3) for c in clients)
    try:
        await a.publish(rows(1, 20, topic))
        await other.publish(rows(21, 20, topic))
        assert await a.check_reset() is None
        assert await b.check_reset() is None
        await a.publish(rows(41, 5, topic))
        await b.publish(rows(46, 5, topic))
        assert await a.check_reset() is None
        assert await b.check_reset() is None
        cluster.pause(replica)
        try:
            await asyncio.to_thread(clog, master.port, stream)
            with pytest.raises(NotReplicated):
                await other.publish(rows(51, 30, topic))
            with pytest.raises(NotReplicated):
                await b.publish(rows(81, 5, topic))
            # Both count the unreplicated entries in the stream.
            assert await a.check_reset() is None
            assert await b.check_reset() is None
            await asyncio.to_thread(cluster.kill, master)
        finally:
            cluster.resume(replica)
        promoted = await asyncio.to_thread(cluster.wait_failover, key_slot(stream), master)
        assert promoted is replica
        seen_by_a = await check_until_answered(a)
        # The old master rejoins as the promoted one's replica: WAITs can pass again.
        await asyncio.to_thread(cluster.restart, master)
        await _publish_until_accepted(b, rows(81, 5, topic))
        seen_by_b = await check_until_answered(b)
        await _publish_until_accepted(other, rows(51, 30, topic))
        entries = await clients[0].xrange(stream)
    finally:
        for client in clients:
            await client.aclose()
    in_stream = {uuid.UUID(f[wire.F_EVENT_ID].decode()).int for _, f in entries}
    assert in_stream == set(range(1, 86)), "every row in the stream after the retries"
    for name, seen in (("a", seen_by_a), ("b", seen_by_b)):
        assert seen is not None, f"{name} saw the failover (the master's run id changed)"
        assert seen.lost_streams == (), (
            "only entries of batches that failed their WAIT went with the master: no event "
            f"was lost, yet relay {name} reported {seen.lost_streams}"
        )


def _role(port: int) -> list[object]:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
        reply = client.execute_command("ROLE")
        assert isinstance(reply, list)
        return reply


def _wait_role(port: int, role: bytes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = _role(port)
            if reply[0] == role and (role == b"master" or reply[3] == b"connected"):
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"node {port} never became {role.decode()}")
        time.sleep(0.1)


def _wait_entries(port: int, key: str, n: int, timeout: float = 30) -> None:
    """Wait until the replica at `port` holds `n` entries of stream `key`."""
    deadline = time.monotonic() + timeout
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
        client.execute_command("READONLY")
        while client.xlen(key) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {port} never held {n} entries of {key}")
            time.sleep(0.05)


async def test_a_failover_to_a_master_that_stalled_rather_than_crashed_is_seen(
    cluster: RedisCluster,
) -> None:
    """The master stalls (a pause, a partition) and comes back as the promoted one's replica,
    with its run id unchanged: the check must ask the master serving the slot now, not the
    one of a slot map nothing refreshed (an idle relay sends no batch that meets a MOVED)."""
    prefix, topic = f"t{uuid.uuid4().hex[:12]}", "stalled"
    stream = wire.Keys(topic, prefix).events
    master = cluster.master_of(stream)
    replica = cluster.replica_of(master)
    url = next(n for n in cluster.master_nodes() if n is not master).url
    client = redis_client.connect(url.replace("redis://", "redis+cluster://", 1))
    publisher = StreamPublisher(client, prefix)  # --wait-replicas 0: a failover can lose
    try:
        await publisher.publish(rows(1, 20, topic))
        assert await publisher.check_reset() is None
        await asyncio.to_thread(_wait_entries, replica.port, stream, 20)  # no WAIT here
        cluster.pause(replica)
        try:
            await asyncio.to_thread(clog, master.port, stream)
            await publisher.publish(rows(21, 30, topic))  # acknowledged, never replicated
            assert await publisher.check_reset() is None
            cluster.pause(master)
        finally:
            cluster.resume(replica)
        try:
            await asyncio.to_thread(_wait_role, replica.port, b"master")
        finally:
            cluster.resume(master)
        await asyncio.to_thread(_wait_role, master.port, b"slave")  # it dropped 21..50
        reports = []
        for _ in range(3):  # the monitor's next checks
            report = await check_until_answered(publisher)
            if report is not None:
                reports.append(report)
        entries = await client.xrange(stream)
    finally:
        await client.aclose()
    in_stream = {uuid.UUID(f[wire.F_EVENT_ID].decode()).int for _, f in entries}
    assert in_stream == set(range(1, 21)), "the failover lost the 30 unreplicated entries"
    assert reports, "the failover was noticed"
    assert reports[0].lost_streams == (stream,), (
        f"30 acknowledged entries went with the failover, yet the relay reported {reports}"
    )


async def test_a_master_and_its_replica_restarted_empty_after_the_relay_went_idle(
    cluster: RedisCluster,
) -> None:
    """Both nodes of a shard lose their data (restarted without their files): every entry of
    the stream is gone, also the ones of the relay's last batches, whose WAIT passed."""
    prefix, topic = f"t{uuid.uuid4().hex[:12]}", "wiped"
    stream = wire.Keys(topic, prefix).events
    master = cluster.master_of(stream)
    replica = cluster.replica_of(master)
    url = next(n for n in cluster.master_nodes() if n is not master).url
    client = redis_client.connect(url.replace("redis://", "redis+cluster://", 1))
    publisher = StreamPublisher(client, prefix, wait_replicas=1, wait_timeout=2.0)
    try:
        assert await publisher.check_reset() is None
        await publisher.publish(rows(1, 50, topic))  # a new stream, then nothing to publish
        for _ in range(3):
            assert await publisher.check_reset() is None
        for node in (replica, master):
            node.kill()
            shutil.rmtree(node.dir / "appendonlydir")
        for node in (master, replica):
            node.start()
        await asyncio.to_thread(_wait_role, master.port, b"master")
        await asyncio.to_thread(_wait_role, replica.port, b"slave")
        reports = []
        for _ in range(3):
            report = await check_until_answered(publisher)
            if report is not None:
                reports.append(report)
        left = await client.xlen(stream)
    finally:
        await client.aclose()
    assert left == 0, "the shard came back empty"
    assert reports, "the restart was noticed"
    assert reports[0].lost_streams == (stream,), (
        f"50 entries whose WAIT passed are gone, yet the relay reported {reports}"
    )
