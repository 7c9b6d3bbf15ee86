"""A Redis Cluster master SIGKILLed under the whole pipeline (2 relays, 3 groups, producers
committing), its replica promoted, the old master restarted as a replica. Before the kill the
replica is paused (SIGSTOP) for a moment, so it misses the master's last writes, as a replica
lagging behind does; one member (`eo-b-0`) is paused too, from before that moment until after
the failover: a group lagging behind, for which the entries the new master lacks are lost (the
other groups have applied them by then).

- With `--wait-replicas 1` the relays' batches of that moment fail their WAIT and stay in the
  outbox: nothing is lost, the torture checker finds every effect once, `conveyor verify` exits 0.
- Without it, the XADDs the replica missed were acknowledged and their rows marked published:
  they vanish with the master. `conveyor verify` names them, `conveyor relay replay` republishes
  them, and the checker is clean after the replay.

Every process rides the failover out without a restart (MOVED and the refreshed slot map)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.cluster import RedisCluster, key_slot
from tests.cluster_tests.support import clog
from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.crashes import replay, verify
from tests.torture.deployment import DEFAULT_GROUPS, Deployment, create_tables
from tests.torture.pipeline import RELAY_ARGS, Pipeline
from tests.torture.report import Report
from tests.torture.workload import Journal, Workload, WorkloadConfig

pytestmark = pytest.mark.slow

GROUPS = DEFAULT_GROUPS
RATE = 60.0
STEADY = 5.0
"""Seconds of load before the replica is paused."""
LAGGING = 1.5
"""Seconds the replica is paused before its master is killed (the master's writes meanwhile
reach no replica)."""
LAGGING_MEMBER = "eo-b-0"


def _deployment(cluster: RedisCluster, database_url: str, schema: str, prefix: str) -> Deployment:
    """The deployment, its URL naming a master that does not hold the topic (so it stays up)."""
    probe = Deployment(database_url, "", schema, prefix)
    holder = cluster.master_of(probe.keys.events)
    other = next(n for n in cluster.master_nodes() if n is not holder)
    url = other.url.replace("redis://", "redis+cluster://", 1)
    return Deployment(database_url, url, schema, prefix)


async def _fail_over(
    cluster: RedisCluster, deployment: Deployment, pipeline: Pipeline
) -> tuple[datetime, str]:
    """Pause LAGGING_MEMBER and the topic master's replica, kill the master, resume the
    replica, wait for its promotion, resume the member, restart the old master (it rejoins as a
    replica)."""
    key = deployment.keys.events
    master = cluster.master_of(key)
    replica = cluster.replica_of(master)
    pipeline.pause(LAGGING_MEMBER)
    await asyncio.sleep(0.5)
    cluster.pause(replica)
    try:
        # The paused replica's socket buffers would still take the writes that follow (and it
        # reads them once resumed): a write larger than they are fills them first.
        await asyncio.to_thread(clog, master.port, key)
        await asyncio.sleep(LAGGING)
        killed_at = datetime.now(UTC)
        await asyncio.to_thread(cluster.kill, master)
    finally:
        cluster.resume(replica)
    began = time.monotonic()
    promoted = await asyncio.to_thread(cluster.wait_failover, key_slot(key), master)
    took = time.monotonic() - began
    pipeline.resume(LAGGING_MEMBER)
    await asyncio.sleep(2)
    await asyncio.to_thread(cluster.restart, master)
    what = f"master :{master.port} killed, replica :{promoted.port} promoted after {took:.1f}s"
    return killed_at, what


async def _scenario(
    cluster: RedisCluster,
    deployment: Deployment,
    relay_args: tuple[str, ...],
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> tuple[Pipeline, Journal, datetime]:
    workload = Workload(WorkloadConfig(deployment.database_url, deployment.schema, seed=seed,
                                       rate=RATE))  # fmt: skip
    pipeline = Pipeline(deployment, log_dir, relays=2, groups=GROUPS, relay_args=relay_args)
    try:
        await pipeline.start()
        workload.start()
        try:
            await asyncio.sleep(STEADY)
            killed_at, what = await _fail_over(cluster, deployment, pipeline)
            attach(request, "failover", what)
            await asyncio.sleep(3)
        finally:
            journal = await workload.stop()
        pipeline.assert_alive()
        await pipeline.wait_serving(timeout=60)
        await settle(deployment, GROUPS, timeout=90, diagnose=pipeline.tails)
    except BaseException:
        await pipeline.close()
        raise
    return pipeline, journal, killed_at


async def _stop(pipeline: Pipeline, request: pytest.FixtureRequest) -> None:
    codes = await asyncio.gather(*(pipeline.terminate(n) for n in pipeline.names()))
    notable = r" (ERROR|CRITICAL) |unreachable|answers again|WAIT|replica|DATA LOSS"
    lines = [f"{n}: {ln}" for n, found in pipeline.grep(notable).items() for ln in found]
    attach(request, "notable log lines", "\n".join(lines[:80]) or "none")
    await pipeline.close()
    assert set(codes) == {0}, codes
    restarted = {n: len(t) for n, t in pipeline.startup_times.items() if len(t) != 1}
    assert not restarted, f"processes started more than once: {restarted}"


@pytest.mark.timeout(300)
async def test_failover_with_wait_replicas_loses_nothing(
    cluster: RedisCluster,
    database_url: str,
    migrated_schema: str,
    key_prefix: str,
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    await create_tables(database_url, migrated_schema)
    deployment = _deployment(cluster, database_url, migrated_schema, key_prefix)
    args = (*RELAY_ARGS, "--wait-replicas", "1", "--wait-timeout", "0.3s")
    pipeline, journal, _ = await _scenario(cluster, deployment, args, seed, log_dir, request)
    try:
        report = await check(deployment, GROUPS, journal, seed=seed)
        attach(request, "torture report", report.table())
        verified = await verify(deployment)
        attach(request, "conveyor verify", verified.summary())
        waited = pipeline.grep(r"NotReplicated: only 0 of the 1 replica")
        alarms = pipeline.grep(r"REDIS DATA LOSS")
    finally:
        await _stop(pipeline, request)
    assert journal.counts()["ok"] > 200, f"too little load to mean anything: {journal.counts()}"
    assert waited, "no batch waited in vain for the paused replica"
    assert not any(alarms.values()), f"a data loss reported where none was: {alarms}"
    assert verified.code == 0, verified.output
    report.assert_clean()


@pytest.mark.timeout(300)
async def test_failover_without_wait_loses_acknowledged_entries_replay_recovers(
    cluster: RedisCluster,
    database_url: str,
    migrated_schema: str,
    key_prefix: str,
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    await create_tables(database_url, migrated_schema)
    deployment = _deployment(cluster, database_url, migrated_schema, key_prefix)
    pipeline, journal, killed_at = await _scenario(
        cluster, deployment, RELAY_ARGS, seed, log_dir, request
    )
    try:
        before = await check(deployment, GROUPS, journal, seed=seed)
        attach(request, "torture report before the replay", before.table())
        found = await verify(deployment)
        attach(request, "conveyor verify after the failover", found.summary())
        after = await _replayed(deployment, pipeline, journal, killed_at, seed, request)
    finally:
        await _stop(pipeline, request)
    lost = {c.group: c.lost for c in before.groups if c.lost}
    assert lost, f"the paused replica missed nothing: {before.table()}"
    assert found.code == 1 and any(found.lost.values()), found.summary()
    for g in GROUPS:
        if g.exactly_once:
            counted = next(c.lost for c in before.groups if c.group == g.name)
            assert found.total[g.name] == counted, (g.name, found.summary(), before.table())
    after.assert_clean()


async def _replayed(
    deployment: Deployment,
    pipeline: Pipeline,
    journal: Journal,
    killed_at: datetime,
    seed: int,
    request: pytest.FixtureRequest,
) -> Report:
    """`conveyor relay replay` from 10 s before the kill, settle, verify (exit 0), check."""
    summary = await replay(deployment, killed_at - timedelta(seconds=10))
    attach(request, "conveyor relay replay", str(summary))
    await settle(deployment, GROUPS, timeout=90, diagnose=pipeline.tails)
    again = await verify(deployment)
    attach(request, "conveyor verify after the replay", again.summary())
    assert again.code == 0, again.output
    after = await check(deployment, GROUPS, journal, seed=seed)
    attach(request, "torture report after the replay", after.table())
    return after
