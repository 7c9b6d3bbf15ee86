"""The Redis client factory's cluster forms (no server needed: clients connect lazily), the
classification of cluster errors as outages, and the key the relay's cluster path routes by."""

from __future__ import annotations

import asyncio

import hiredis
import pytest
from redis import exceptions as redis_errors

from conveyor import redis_client
from conveyor.urls import REDIS_SCHEMES, url_problem
from relay.cluster_send import key_of


def test_cluster_schemes_force_a_cluster_client_with_the_hiredis_packer() -> None:
    for url, tls in (("redis+cluster://10.0.0.1:7000/0", False), ("rediss+cluster://h:7000", True)):
        client = redis_client.connect(url)
        assert redis_client.is_cluster(client), url
        kind = client.connection_kwargs["connection_class"]
        assert kind is (redis_client._TlsConnection if tls else redis_client._TcpConnection)
        (node,) = client.nodes_manager.startup_nodes.values()
        assert node.connection_class is kind
        assert (node.host, int(node.port)) == (("10.0.0.1", 7000) if not tls else ("h", 7000))


def test_a_plain_url_is_one_server_unless_detected_or_asked() -> None:
    assert not redis_client.is_cluster(redis_client.connect("redis://127.0.0.1:1/0"))
    assert redis_client.is_cluster(redis_client.connect("redis://127.0.0.1:1/0", cluster=True))
    with pytest.raises(ValueError, match="over TCP, not a unix socket"):
        redis_client.connect("unix:///run/redis.sock", cluster=True)


def test_detection_of_a_server_that_does_not_answer_is_unknown() -> None:
    async def detect() -> bool | None:
        return await redis_client.detect("redis://127.0.0.1:1/0", timeout=2)

    assert asyncio.run(detect()) is None
    assert asyncio.run(redis_client.detect("redis+cluster://127.0.0.1:1/0")) is True


def test_cluster_urls_pass_the_url_check() -> None:
    assert url_problem("redis+cluster://:pw@node-0:6379/0", REDIS_SCHEMES) is None
    assert url_problem("rediss+cluster://node-0:6380", REDIS_SCHEMES) is None
    problem = url_problem("redis+sentinel://node-0:26379", REDIS_SCHEMES)
    assert problem is not None and "redis+cluster://" in problem


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (redis_errors.ConnectionError("refused"), True),
        (redis_errors.TimeoutError("slow"), True),
        (redis_errors.MaxConnectionsError(), True),
        (redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down"), True),
        (redis_errors.MasterDownError("MASTERDOWN"), True),
        (redis_errors.TryAgainError("TRYAGAIN"), True),
        (redis_errors.MovedError("3999 127.0.0.1:6381"), True),
        (redis_client.ClusterUnavailable("no node"), True),
        (ConnectionRefusedError(), True),
        (redis_errors.AuthenticationError("WRONGPASS"), False),
        (redis_errors.ResponseError("WRONGTYPE"), False),
        (redis_errors.OutOfMemoryError("OOM"), False),
    ],
)
def test_which_errors_are_outages(error: BaseException, outage: bool) -> None:
    assert redis_client.unavailable(error) is outage


def test_uncovered_slots_and_unreachable_clusters_become_connection_errors() -> None:
    """redis-py raises these outside RedisError; Conveyor's retry loops catch RedisError."""
    uncovered = redis_errors.SlotNotCoveredError('Slot "7" is not covered by the cluster.')
    gone = redis_errors.RedisClusterException("Redis Cluster cannot be connected. Please ...")
    for error in (uncovered, gone):
        converted = redis_client._outage(error)
        assert isinstance(converted, redis_client.ClusterUnavailable)
        assert isinstance(converted, redis_errors.RedisError)
    assert redis_client._outage(redis_errors.RedisClusterException("CROSSSLOT keys")) is None


def test_the_cluster_path_routes_each_packed_xadd_by_its_key() -> None:
    for key in (b"conveyor:{orders}:events", b"p:{t:7}:events", b"k" * 300):
        packed = hiredis.pack_command((b"XADD", key, b"*", b"f", b"v\r\n$3\r\nXADD"))
        assert key_of(packed) == key
