"""Servers crashing under a running pipeline, on throwaway servers: PostgreSQL stopped with
`pg_ctl stop -m immediate`, Redis killed with SIGKILL (with `appendfsync always`; with `everysec`,
as a crash of the process and as a crash of its host), each restarted a moment later while
producers keep committing. Every process rides it out without a restart; no event of a committed
transaction is lost and none is applied twice by an exactly-once group — where Redis lost
acknowledged writes, after the runbook's recovery: `conveyor verify` names what each group lost,
`conveyor relay replay --since` republishes it (docs/operations.md, "Redis durability and replay").

In every Redis crash one member (`eo-b-0`) is paused for the last 1.5 s before the kill and
resumed after the restart: a group lagging behind, for which the entries Redis loses are lost
(the other groups have applied them by then)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.servers import PostgresServer, RedisServer
from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.crashes import AofSampler, merged, replay, start_burst, verify
from tests.torture.deployment import DEFAULT_GROUPS, Deployment, create_tables, prepare
from tests.torture.pipeline import Pipeline
from tests.torture.report import Report
from tests.torture.workload import Journal, Workload, WorkloadConfig

pytestmark = pytest.mark.slow

GROUPS = DEFAULT_GROUPS  # eo-a and eo-b exactly-once, alo-c at-least-once, 1 member each
LAGGING = "eo-b-0"
RATE = 60.0
STEADY = 6.0
"""Seconds of steady load before a Redis crash (plus up to 1.5 s, seeded). More than verify's
5 s clock-skew allowance: an entry lost that close after the stream's first entry is `trimmed`
(unknown) for it, not lost."""
AFTER = 4.0
"""Seconds of load after a restart: new entries take each group past the lost ones."""
EVERYSEC = ("--appendfsync", "everysec", "--auto-aof-rewrite-percentage", "0")
"""Later arguments win: RedisServer(appendonly=True) says `always`, these make it `everysec`
(and keep Redis from rewriting the AOF mid-test)."""

Servers = Callable[..., RedisServer]


@pytest.fixture
def redis_servers() -> Iterator[Servers]:
    """Makes throwaway Redis servers (RedisServer's arguments), closed after the test."""
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> RedisServer:
            return stack.enter_context(RedisServer(**kwargs))

        yield make


@pytest.fixture
def throwaway_pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


async def _stop_all(pipeline: Pipeline, request: pytest.FixtureRequest) -> list[int]:
    """SIGTERM every process (each must exit 0); attach the logs' notable lines."""
    codes = await asyncio.gather(*(pipeline.terminate(n) for n in pipeline.names()))
    notable = r" (ERROR|CRITICAL) |unreachable|answers again|redis restarted|GROUP LOST|serving"
    lines = [f"{n}: {ln}" for n, found in pipeline.grep(notable).items() for ln in found]
    attach(request, "notable log lines", "\n".join(lines[:80]) or "none")
    return list(codes)


def _timing(request: pytest.FixtureRequest, pipeline: Pipeline, began: float) -> None:
    took = time.monotonic() - began
    attach(request, "timing", f"{took:.1f}s from the first process start; seconds to listen, "
                              f"per start: {pipeline.startup_times}")  # fmt: skip


def _no_tracebacks(pipeline: Pipeline) -> None:
    """Outages are logged as lines, not tracebacks (and no task fails unobserved)."""
    shown = []
    for name in pipeline.grep(r"Traceback|never retrieved"):
        lines = (pipeline.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        first = next(i for i, ln in enumerate(lines) if "Traceback" in ln or "retrieved" in ln)
        shown.append(f"--- {name}:\n" + "\n".join(lines[max(first - 2, 0) : first + 30]))
    assert not shown, "tracebacks in the logs:\n" + "\n".join(shown)


def _started_once(pipeline: Pipeline) -> None:
    restarted = {n: len(t) for n, t in pipeline.startup_times.items() if len(t) != 1}
    assert not restarted, f"processes started more than once: {restarted}"


@pytest.mark.timeout(180)
async def test_postgres_crashed_and_restarted_under_load_loses_and_doubles_nothing(
    throwaway_pg: PostgresServer,
    redis_servers: Servers,
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    rng = random.Random(seed)
    pg, redis = throwaway_pg, redis_servers()
    deployment = Deployment(pg.url, redis.url, "crash", "crash")
    await prepare(deployment)  # outbox, ledger and catalog all on the server that crashes
    workload = Workload(WorkloadConfig(pg.url, deployment.schema, seed=seed, rate=RATE))
    began = time.monotonic()
    async with Pipeline(deployment, log_dir, relays=2, groups=GROUPS) as pipeline:
        await pipeline.start()
        workload.start()
        burst = None
        try:
            await asyncio.sleep(rng.uniform(4.0, 6.0))
            burst = start_burst(deployment, seed)  # commits in flight when the server goes
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg.stop, "immediate")  # backends killed, no checkpoint
            await burst.stop()
            await asyncio.sleep(down := rng.uniform(1.0, 2.0))
            await asyncio.to_thread(pg.start)  # crash recovery replays the WAL
            after_restart = len(workload.journal.txns)
            await asyncio.sleep(AFTER + 2)
        finally:
            await workload.stop()
            if burst is not None:
                await burst.stop()
        journal = merged(workload.journal, burst.journal)
        errors = dict(workload.errors + burst.errors)
        attach(request, "crash", f"down {down:.1f}s; producers' errors {errors}")
        pipeline.assert_alive()
        await pipeline.wait_serving(timeout=30)
        await settle(deployment, GROUPS, timeout=60, diagnose=pipeline.tails)
        report = await check(deployment, GROUPS, journal, seed=seed)
        attach(request, "torture report", report.table())
        verified = await verify(deployment)
        attach(request, "conveyor verify", verified.summary())
        _started_once(pipeline)
        codes = await _stop_all(pipeline, request)
    _timing(request, pipeline, began)
    assert set(codes) == {0}, codes
    _no_tracebacks(pipeline)
    later = sum(t.status == "ok" for t in workload.journal.txns[after_restart:])
    assert later > 100, f"producers did not recover: {later} commits after the restart"
    assert journal.counts()["ok"] > 300, f"too little load to mean anything: {journal.counts()}"
    assert verified.code == 0, verified.output
    report.assert_clean()


async def _crash_redis(
    pipeline: Pipeline,
    deployment: Deployment,
    redis: RedisServer,
    workload: Workload,
    rng: random.Random,
    seed: int,
    *,
    host_crash: bool = False,
) -> tuple[Journal, datetime, str]:
    """Steady load, then a burst with LAGGING paused, SIGKILL, (a host crash: the AOF cut to
    what it held about a second earlier), restart, load after. Returns the journal (the burst
    included), the wall time of the kill and what happened."""
    await asyncio.sleep(STEADY + rng.uniform(0, 1.5))
    sampler = AofSampler(redis)
    sampler.start()
    burst = start_burst(deployment, seed)
    try:
        await asyncio.sleep(1.0)
        pipeline.pause(LAGGING)
        await asyncio.sleep(1.5)
        crashed, crashed_wall = time.monotonic(), datetime.now(UTC)
        await asyncio.to_thread(redis.kill)
    finally:
        await sampler.stop()
        burst_journal = await burst.stop()
    what = f"SIGKILL after {len(burst_journal.txns)} burst transactions"
    if host_crash:
        lag = rng.uniform(0.7, 1.2)
        at_crash, kept = sampler.truncate(crashed, lag)
        what += f"; AOF cut to its size {lag:.2f}s earlier: {kept} of {at_crash} bytes"
    await asyncio.sleep(down := rng.uniform(0.5, 1.5))
    await asyncio.to_thread(redis.start)
    pipeline.resume(LAGGING)
    what += f"; down {down:.1f}s"
    await asyncio.sleep(AFTER)
    return merged(await workload.stop(), burst_journal), crashed_wall, what


async def _redis_deployment(
    database_url: str, schema: str, key_prefix: str, redis: RedisServer
) -> Deployment:
    """The test's schema on the shared PostgreSQL, its key prefix on the throwaway Redis."""
    await create_tables(database_url, schema)
    return Deployment(database_url, redis.url, schema, key_prefix)


@pytest.mark.timeout(180)
async def test_redis_killed_with_fsync_always_loses_nothing_and_needs_no_replay(
    database_url: str,
    migrated_schema: str,
    key_prefix: str,
    redis_servers: Servers,
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    rng = random.Random(seed)
    redis = redis_servers(appendonly=True)  # appendfsync always
    deployment = await _redis_deployment(database_url, migrated_schema, key_prefix, redis)
    workload = Workload(WorkloadConfig(database_url, deployment.schema, seed=seed, rate=RATE))
    began = time.monotonic()
    async with Pipeline(deployment, log_dir, relays=2, groups=GROUPS) as pipeline:
        await pipeline.start()
        workload.start()
        journal, _, what = await _crash_redis(pipeline, deployment, redis, workload, rng, seed)
        attach(request, "crash", what)
        pipeline.assert_alive()
        await pipeline.wait_serving(timeout=30)
        await settle(deployment, GROUPS, timeout=60, diagnose=pipeline.tails)
        verified = await verify(deployment)  # what the runbook says to run after a restart
        attach(request, "conveyor verify", verified.summary())
        report = await check(deployment, GROUPS, journal, seed=seed)
        attach(request, "torture report", report.table())
        _started_once(pipeline)
        codes = await _stop_all(pipeline, request)
    _timing(request, pipeline, began)
    assert set(codes) == {0}, codes
    _no_tracebacks(pipeline)
    assert verified.code == 0, verified.output
    report.assert_clean()
    assert not pipeline.grep("REDIS DATA LOSS|GROUP LOST"), "no loss to report"
    noticed = pipeline.grep(r"redis restarted \(run id .*kept its entries")
    assert set(noticed) == set(pipeline.names("relay")), f"restart noticed by {set(noticed)}"


async def _lost_then_replayed(
    pipeline: Pipeline,
    deployment: Deployment,
    journal: Journal,
    crashed_wall: datetime,
    seed: int,
    request: pytest.FixtureRequest,
) -> tuple[Report, Report, bool]:
    """After the crash: settle, count what was lost (checker and `conveyor verify`, which must
    agree on the exactly-once groups); when anything was, replay from 10 s before the crash,
    settle, and verify again (exit 0). Returns the reports before and after, and whether a
    replay ran."""
    await settle(deployment, GROUPS, timeout=60, diagnose=pipeline.tails)
    before = await check(deployment, GROUPS, journal, seed=seed)
    attach(request, "torture report before any replay", before.table())
    found = await verify(deployment)
    attach(request, "conveyor verify after the restart", found.summary())
    assert found.code in (0, 1), found.output
    for g in GROUPS:
        if g.exactly_once:
            counted = next(c.lost for c in before.groups if c.group == g.name)
            assert found.total[g.name] == counted, (g.name, found.summary(), before.table())
            examples = {str(e) for e in before.examples.get((g.name, "lost"), [])}
            if found.total[g.name] == len(found.lost[g.name]):  # verify named every one
                assert examples <= found.lost[g.name], (g.name, examples, found.summary())
    assert (found.code == 1) == any(found.lost.values()), found.summary()
    if before.clean:
        return before, before, False
    summary = await replay(deployment, crashed_wall - timedelta(seconds=10))
    attach(request, "conveyor relay replay", str(summary))
    await settle(deployment, GROUPS, timeout=60, diagnose=pipeline.tails)
    again = await verify(deployment)
    attach(request, "conveyor verify after the replay", again.summary())
    assert again.code == 0, again.output
    after = await check(deployment, GROUPS, journal, seed=seed)
    return before, after, True


async def _everysec_crash(
    host_crash: bool,
    database_url: str,
    schema: str,
    key_prefix: str,
    redis_servers: Servers,
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> tuple[Report, Report, bool, dict[str, str]]:
    """The everysec scenarios; returns the reports before and after the recovery, whether a
    replay ran, and what each relay said of the restart ("data loss" or "kept")."""
    rng = random.Random(seed)
    redis = redis_servers(appendonly=True, config=EVERYSEC)
    deployment = await _redis_deployment(database_url, schema, key_prefix, redis)
    workload = Workload(WorkloadConfig(database_url, deployment.schema, seed=seed, rate=RATE))
    began = time.monotonic()
    async with Pipeline(deployment, log_dir, relays=2, groups=GROUPS) as pipeline:
        await pipeline.start()
        workload.start()
        journal, crashed_wall, what = await _crash_redis(
            pipeline, deployment, redis, workload, rng, seed, host_crash=host_crash
        )
        attach(request, "crash", what)
        pipeline.assert_alive()
        await pipeline.wait_serving(timeout=30)
        before, after, replayed = await _lost_then_replayed(
            pipeline, deployment, journal, crashed_wall, seed, request
        )
        attach(request, "torture report", after.table())
        _started_once(pipeline)
        codes = await _stop_all(pipeline, request)
    _timing(request, pipeline, began)
    assert set(codes) == {0}, codes
    _no_tracebacks(pipeline)
    said = {
        name: "data loss" if any("REDIS DATA LOSS" in ln for ln in lines) else "kept"
        for name, lines in pipeline.grep(r"REDIS DATA LOSS|redis restarted").items()
    }
    lost = {c.group: c.lost for c in before.groups if c.lost}
    attach(request, "what the relays said of the restart", f"{said}; lost before replay {lost}")
    # The relay compares entries-added with its last look: entries it or another relay appends
    # after the restart, before its next look, can hide a lost tail, and it then says the
    # streams kept their entries. Reported, not asserted: docs/operations.md promises no
    # notice of a lost tail; `conveyor verify` is what finds it.
    return before, after, replayed, said


@pytest.mark.timeout(180)
async def test_redis_host_crash_with_fsync_everysec_loss_is_found_and_replayed(
    database_url: str,
    migrated_schema: str,
    key_prefix: str,
    redis_servers: Servers,
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    before, after, replayed, _ = await _everysec_crash(
        True, database_url, migrated_schema, key_prefix, redis_servers, seed, log_dir, request
    )
    lagging = next(c for c in before.groups if c.group == "eo-b")
    assert lagging.lost > 0, "the lagging group lost the tail Redis lost"
    assert replayed
    after.assert_clean()


@pytest.mark.timeout(180)
async def test_redis_process_killed_with_fsync_everysec_any_loss_is_found_and_replayed(
    database_url: str,
    migrated_schema: str,
    key_prefix: str,
    redis_servers: Servers,
    seed: int,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    before, after, replayed, _ = await _everysec_crash(
        False, database_url, migrated_schema, key_prefix, redis_servers, seed, log_dir, request
    )
    if replayed:
        lost = {(c.group, c.lost) for c in before.groups if c.lost}
        attach(request, "note", f"Redis lost acknowledged entries in a process crash: {lost}")
    else:
        attach(request, "note", "nothing was lost this run: no replay was needed")
    after.assert_clean()
