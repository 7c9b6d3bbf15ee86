"""The relay's reset check under `--wait-replicas` on one server with a replica: entries of
batches that passed their WAIT are counted as entries a restart must keep, so a Redis that
comes back without them is REDIS DATA LOSS — also when the relay went idle after them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from conveyor import redis_client, wire
from relay.publisher import ResetReport, StreamPublisher
from relay.store import Row
from tests.processes import wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def replicated() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master without persistence and one replica of it."""
    master = RedisServer()
    with master, RedisServer(config=("--replicaof", "127.0.0.1", str(master.port))) as replica:
        yield master, replica


def _rows(start: int, n: int, topic: str) -> list[Row]:
    return [
        (i, uuid.UUID(int=i), topic, "t.v1.T", f"agg{i}", None, b"payload")
        for i in range(start, start + n)
    ]


async def _replica_online(client: Any) -> bool:
    info = await client.info("replication")
    return int(info.get("connected_slaves", 0)) == 1 and "online" in str(info.get("slave0", ""))


async def _check(publisher: StreamPublisher) -> ResetReport | None:
    """The reset check, repeated as the relay's monitor does while Redis does not answer."""
    for _ in range(100):
        try:
            return await publisher.check_reset()
        except (redis.RedisError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("the reset check never got an answer after the restart")


@pytest.mark.parametrize("checks_before_publishing", [0, 1])
async def test_a_restart_losing_the_batches_of_a_relay_gone_idle_is_reported(
    replicated: tuple[RedisServer, RedisServer], checks_before_publishing: int
) -> None:
    master, _ = replicated
    prefix, topic = f"t{uuid.uuid4().hex[:12]}", "burst"
    stream = wire.Keys(topic, prefix).events
    client = redis_client.connect(master.url)
    publisher = StreamPublisher(client, prefix, wait_replicas=1, wait_timeout=2.0)
    try:
        await wait_until(lambda: _replica_online(client), what="the replica in sync")
        for _ in range(checks_before_publishing):
            assert await publisher.check_reset() is None
        # One burst, every batch acknowledged by the replica, then nothing more to publish.
        await publisher.publish(_rows(1, 50, topic))
        await publisher.publish(_rows(51, 50, topic))
        for _ in range(3):  # the monitor keeps checking an idle relay
            assert await publisher.check_reset() is None
        assert (await client.xinfo_stream(stream))["entries-added"] == 100
        master.restart()  # nothing on disk: the replica resyncs an empty master too
        report = await _check(publisher)
    finally:
        await client.aclose()
    assert report is not None, "the run id changed"
    assert report.lost_streams == (stream,), (
        "100 entries whose WAIT passed are gone with the restart, yet the relay reported "
        f"lost streams {report.lost_streams}"
    )
