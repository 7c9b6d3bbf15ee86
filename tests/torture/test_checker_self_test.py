"""The checker's self-test: deliberately broken builds (tests/torture/broken.py) run a small torture
scenario each, and the checker must fail them, with the count of the kind the bug causes. A
checker that passed a broken build would pass anything.

ack-before-commit        an exactly-once member is SIGKILLed while its batch is in its
                         transaction; the group's other member takes over. Every event of the
                         batch was acknowledged and never committed: lost.
skip-ledger              the member is paused (SIGSTOP) there instead; the other member reclaims
                         the batch and applies it, then the first one resumes and commits it
                         too: every event of the batch is a duplicate.
publish-without-marking  a relay and an at-least-once group, no fault: the outbox never drains
                         (settle fails naming every committed event's row), while the relay
                         publishes the rows again and again and the group applies them again.

In the first two, both members are held back (SIGSTOP) while the events are produced and
published, then one is let go: its first read takes the whole stream as one batch, which a
handler sleep keeps in its transaction for a few seconds, so the fault lands mid-transaction and
the counts are exact: every committed event of the scenario. The normal build passes these
scenarios (tests/torture/test_process_faults.py runs it under many more faults); a scenario
function takes the build (`mode`, None: normal), so the same scenario can run either.
"""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from consumers.settings import ConsumerSettings
from tests.processes import wait_until
from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.deployment import Deployment, Group
from tests.torture.pipeline import RELAY_ARGS, Pipeline
from tests.torture.report import Report
from tests.torture.router import DEFAULT_TOPIC, SLEEP_ENV
from tests.torture.workload import Journal, Workload, WorkloadConfig

pytestmark = pytest.mark.slow

BROKEN = (sys.executable, "-m", "tests.torture.broken")
TRANSACTIONS = 12
"""Business transactions of a scenario: 10-30 events (some fail on purpose)."""
SLEEP = "0.15"
"""Seconds each event's handler sleeps in its transaction: a batch of a scenario stays open for
1.5-4.5 s, time to see it in flight, and not so long past --claim-idle (2 s) that its own member
reclaims it again and again."""
READ_BLOCK = ConsumerSettings("eo-a", (DEFAULT_TOPIC,)).block
"""Seconds a consumer's XREADGROUP blocks: a member paused longer than that reads nothing."""
BROKEN_SETTLE = 10.0
"""Seconds settle waits where it is expected to fail."""


@dataclass
class Outcome:
    report: Report
    committed: int
    """Events of committed transactions."""
    before_fault: int = 0
    """Effects the group had committed when the fault hit (0: the batch was in flight)."""
    unsettled: str = ""
    """settle's AssertionError, when it failed."""
    entries: int = 0
    """Entries of the topic stream (republished ones included)."""


def _build(pipeline: Pipeline, mode: str | None, *names: str) -> None:
    """The named processes run the build broken as `mode` says (None: the normal build)."""
    if mode is not None:
        for name in names:
            pipeline.specs[name].command = [*BROKEN, mode]


async def _produce(deployment: Deployment, seed: int) -> tuple[Journal, int]:
    """TRANSACTIONS business transactions; the journal and how many events committed."""
    config = WorkloadConfig(
        deployment.database_url,
        deployment.schema,
        seed=seed,
        producers=2,
        rate=None,
        total=TRANSACTIONS,
    )
    workload = Workload(config)
    workload.start()
    journal = await workload.wait(timeout=30)
    await journal.resolve(deployment.database_url, deployment.schema)
    committed = sum(1 for _ in journal.events("ok"))
    assert committed >= 5, f"too few events to mean anything: {journal.counts()}"
    return journal, committed


async def _all_delivered(deployment: Deployment, group: str) -> bool:
    """Whether the group has been delivered the topic stream's last entry."""
    r = aioredis.from_url(deployment.redis_url)
    try:
        stream = deployment.keys.events
        groups = {g["name"].decode(): g for g in await r.xinfo_groups(stream)}
        last = (await r.xinfo_stream(stream))["last-generated-id"]
    finally:
        await r.aclose()
    return group in groups and groups[group]["last-delivered-id"] == last


async def _applying(deployment: Deployment, group: str) -> bool:
    """Whether the group has been delivered the whole stream and a transaction of the handler
    is open (it inserted an effect, uncommitted yet)."""
    if not await _all_delivered(deployment, group):
        return False
    conn = await asyncpg.connect(deployment.database_url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
                "AND state = 'idle in transaction' AND query LIKE $1)",
                f"INSERT INTO {deployment.schema}.effects %",
            )
        )
    finally:
        await conn.close()


async def _effects(deployment: Deployment, group: str) -> int:
    conn = await asyncpg.connect(deployment.database_url)
    try:
        return int(
            await conn.fetchval(
                f"SELECT count(*) FROM {deployment.schema}.effects WHERE consumer_group = $1",
                group,
            )
        )
    finally:
        await conn.close()


async def _stream_length(deployment: Deployment) -> int:
    r = aioredis.from_url(deployment.redis_url)
    try:
        return int(await r.xlen(deployment.keys.events))
    finally:
        await r.aclose()


async def _one_batch_in_flight(
    pipeline: Pipeline, deployment: Deployment, seed: int
) -> tuple[Journal, int]:
    """Start the relay and both members of eo-a, hold the members back until every committed
    event is in the stream, then let eo-a-0 go and wait until it has read them all (one batch)
    and is applying them in a transaction (the handler sleep keeps it there). eo-a-1 stays
    paused."""
    await pipeline.start()
    pipeline.pause("eo-a-0")
    pipeline.pause("eo-a-1")
    await asyncio.sleep(READ_BLOCK + 1)  # a blocking read sent before the pause has expired
    journal, committed = await _produce(deployment, seed)
    await settle(deployment, (), timeout=30, diagnose=pipeline.tails)  # the outbox drained
    pipeline.resume("eo-a-0")
    await wait_until(
        lambda: _applying(deployment, "eo-a"), 30, 0.02, "eo-a-0 to apply the whole stream"
    )
    return journal, committed


async def _finish(pipeline: Pipeline, deployment: Deployment, groups: tuple[Group, ...]) -> None:
    """Settle, then SIGTERM every consumer still running, so a batch still applying (entries
    delivered again after another member acknowledged them) ends before the check."""
    await settle(deployment, groups, timeout=30, diagnose=pipeline.tails)
    for name in pipeline.names("consume"):
        if pipeline.running(name):
            await pipeline.terminate(name)


def _eo_pipeline(deployment: Deployment, log_dir: Path, mode: str | None) -> Pipeline:
    groups = (Group("eo-a", members=2),)
    pipeline = Pipeline(deployment, log_dir, relays=1, groups=groups, env={SLEEP_ENV: SLEEP})
    _build(pipeline, mode, "eo-a-0", "eo-a-1")
    return pipeline


async def killed_mid_batch(
    deployment: Deployment, seed: int, log_dir: Path, mode: str | None
) -> Outcome:
    """eo-a-0 SIGKILLed with its batch in flight; eo-a-1 resumes (and reclaims what is pending)."""
    pipeline = _eo_pipeline(deployment, log_dir, mode)
    async with pipeline:
        journal, committed = await _one_batch_in_flight(pipeline, deployment, seed)
        await pipeline.kill("eo-a-0")
        before = await _effects(deployment, "eo-a")
        pipeline.resume("eo-a-1")
        await _finish(pipeline, deployment, pipeline.groups)
        report = await check(deployment, pipeline.groups, journal, seed=seed)
    return Outcome(report, committed, before)


async def reclaimed_from_paused_member(
    deployment: Deployment, seed: int, log_dir: Path, mode: str | None
) -> Outcome:
    """eo-a-0 paused with its batch in flight; eo-a-1 resumes and reclaims the batch, then
    eo-a-0 resumes too."""
    pipeline = _eo_pipeline(deployment, log_dir, mode)

    async def reclaimed() -> bool:
        return "eo-a-1" in pipeline.grep("reclaimed entries")

    async with pipeline:
        journal, committed = await _one_batch_in_flight(pipeline, deployment, seed)
        pipeline.pause("eo-a-0")
        before = await _effects(deployment, "eo-a")
        pipeline.resume("eo-a-1")
        await wait_until(reclaimed, 30, 0.05, "eo-a-1 to reclaim the batch")
        pipeline.resume("eo-a-0")
        await _finish(pipeline, deployment, pipeline.groups)
        report = await check(deployment, pipeline.groups, journal, seed=seed)
    return Outcome(report, committed, before)


async def relayed_for_a_while(
    deployment: Deployment, seed: int, log_dir: Path, mode: str | None, settle_for: float
) -> Outcome:
    """A relay and an at-least-once group, no fault; settle waits `settle_for` seconds."""
    groups = (Group("alo-c", exactly_once=False),)
    # Claims paced a quarter second apart: a relay that republishes every row at each claim
    # would otherwise flood the stream (and the group) with thousands of entries a second.
    relay_args = (*RELAY_ARGS, "--gather-delay", "0.25s")
    pipeline = Pipeline(deployment, log_dir, relays=1, groups=groups, relay_args=relay_args)
    _build(pipeline, mode, "relay-0")
    unsettled = ""
    async with pipeline:
        await pipeline.start()
        journal, committed = await _produce(deployment, seed)
        try:
            await settle(deployment, groups, timeout=settle_for, diagnose=pipeline.tails)
        except AssertionError as exc:
            unsettled = str(exc)
        await pipeline.terminate("relay-0")
        entries = await _stream_length(deployment)
        await pipeline.terminate("alo-c-0")
        report = await check(deployment, groups, journal, seed=seed)
    return Outcome(report, committed, unsettled=unsettled, entries=entries)


@pytest.mark.timeout(120)
async def test_acknowledging_before_the_commit_loses_the_batch_in_flight(
    deployment: Deployment, seed: int, log_dir: Path, request: pytest.FixtureRequest
) -> None:
    outcome = await killed_mid_batch(deployment, seed, log_dir, "ack-before-commit")
    report, committed = outcome.report, outcome.committed
    attach(request, "torture report", report.table())
    assert outcome.before_fault == 0, "the batch committed before the kill: this proves nothing"
    assert report.problems() == {("eo-a", "lost"): committed}
    with pytest.raises(AssertionError, match=rf"\neo-a: {committed} lost, e\.g\.:\n"):
        report.assert_clean()


@pytest.mark.timeout(120)
async def test_skipping_the_ledger_applies_a_reclaimed_batch_twice(
    deployment: Deployment, seed: int, log_dir: Path, request: pytest.FixtureRequest
) -> None:
    outcome = await reclaimed_from_paused_member(deployment, seed, log_dir, "skip-ledger")
    report, committed = outcome.report, outcome.committed
    attach(request, "torture report", report.table())
    assert outcome.before_fault == 0, "the batch committed before the pause: this proves nothing"
    assert report.problems() == {("eo-a", "duplicate"): committed}
    with pytest.raises(AssertionError, match=rf"\neo-a: {committed} duplicate, e\.g\.:\n"):
        report.assert_clean()


@pytest.mark.timeout(120)
async def test_publishing_without_marking_never_drains_the_outbox(
    deployment: Deployment, seed: int, log_dir: Path, request: pytest.FixtureRequest
) -> None:
    outcome = await relayed_for_a_while(
        deployment, seed, log_dir, "publish-without-marking", BROKEN_SETTLE
    )
    report, committed = outcome.report, outcome.committed
    attach(request, "torture report", report.table())
    expected = f"not settled after {BROKEN_SETTLE}s: {committed} outbox rows unpublished"
    assert re.match(re.escape(expected) + "[;\n]", outcome.unsettled), outcome.unsettled
    # Meanwhile every claim published the rows again and the group applied them again, which
    # the counts allow an at-least-once group: settle is what catches this bug.
    alo = report.groups[0]
    assert outcome.entries > committed, f"{outcome.entries} entries: nothing republished"
    assert alo.applied == committed, report.table()
    assert alo.effects > committed, f"republished events not applied again:\n{report.table()}"
