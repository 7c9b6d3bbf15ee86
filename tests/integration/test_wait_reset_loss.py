"""The relay's reset check under `--wait-replicas` on one server with a replica: entries of
batches that passed their WAIT are counted as entries a restart must keep, so a Redis that
comes back without them is REDIS DATA LOSS — also when the relay went idle after them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import redis_client, wire
from relay.publisher import StreamPublisher
from tests.processes import wait_until
from tests.reset_support import check_until_answered, rows
from tests.servers import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def replicated() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master without persistence and one replica of it."""
    master = RedisServer()
    with master, RedisServer(config=("--replicaof", "127.0.0.1", str(master.port))) as replica:
        yield master, replica


async def _replica_online(client: Any) -> bool:
    info = await client.info("replication")
    return int(info.get("connected_slaves", 0)) == 1 and "online" in str(info.get("slave0", ""))


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
        await publisher.publish(rows(1, 50, topic))
        await publisher.publish(rows(51, 50, topic))
        for _ in range(3):  # the monitor keeps checking an idle relay
            assert await publisher.check_reset() is None
        assert (await client.xinfo_stream(stream))["entries-added"] == 100
        master.restart()  # nothing on disk: the replica resyncs an empty master too
        report = await check_until_answered(publisher)
    finally:
        await client.aclose()
    assert report is not None, "the run id changed"
    assert report.lost_streams == (stream,), (
        "100 entries whose WAIT passed are gone with the restart, yet the relay reported "
        f"lost streams {report.lost_streams}"
    )
