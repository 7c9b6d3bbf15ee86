"""Fixtures of the Redis Cluster tests: a throwaway cluster (tests/cluster.py) per test module.

`redis_cluster` starts 3 masters and 3 replicas on loopback ports (AOF on, appendfsync always,
cluster-node-timeout 1.5 s) for the tests of one module and removes them afterwards, also when
a test fails. `cluster.url` is a plain redis:// URL of one node (processes detect the cluster);
`cluster.cluster_url` the redis+cluster:// form that forces cluster mode. Tests that kill a
master restart it (`cluster.restart(node)`) or take `cluster`, a cluster of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import RedisCluster, binaries_missing
from tests.torture.conftest import log_dir, pytest_runtest_makereport, seed

__all__ = ["cluster", "log_dir", "pytest_runtest_makereport", "redis_cluster", "seed"]
"""The torture suite's `seed` and `log_dir` fixtures and its report hook (attach()'s sections,
the seed of a failed test), for the failover scenarios that use its checker."""


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    if why := binaries_missing():
        pytest.skip(f"no Redis Cluster: {why}")
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    """A cluster of the test's own (it loses a master)."""
    if why := binaries_missing():
        pytest.skip(f"no Redis Cluster: {why}")
    with RedisCluster(fsync="always") as started:
        yield started
