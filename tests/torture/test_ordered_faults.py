"""An ordered partitioned topic under process faults: 3 relays and 4 members of an ordered group
(4 partitions, leases of 2 s; a second group of one member beside it) killed, paused past their
leases and restarted while producers commit. Per aggregate each group applies events in stream
order, each exactly once, and nothing is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path

import asyncpg
import pytest

from tests.torture.chaos import Step, describe, make_schedule, run_schedule
from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.deployment import Deployment, Group
from tests.torture.pipeline import Pipeline
from tests.torture.router import SLEEP_ENV
from tests.torture.workload import Workload, WorkloadConfig

pytestmark = pytest.mark.slow

FAULTS_FOR = 24.0
PARTITIONS = 4
ORDERED = Group("ord", members=4, args=("--lease-ttl", "2s"))
GROUPS = (ORDERED, Group("eo-b"))
"""Both groups apply in order (the layout is the topic's); eo-b with one member, whose leases only
change hands when it restarts."""


PAST_LEASE = 3.5
"""A pause this long outlives a 2 s lease and the others' next rebalance (every ttl / 3): another
member takes the paused one's partitions, and it finds its lease lost once resumed."""


def _schedule(rng: random.Random, names: list[str]) -> list[Step]:
    """The seed's first schedule that pauses a member of the ordered group past its lease (a
    kill, or a pause shorter than that, may hand a lease over with nothing pending and log
    nothing of it, leaving the takeover unproved)."""
    for _ in range(100):
        steps = make_schedule(rng, names, FAULTS_FOR, gap=(1.5, 3.0), hold=(0.5, 5.0))
        if any(
            s.action == "pause" and s.target.startswith(f"{ORDERED.name}-") and s.hold >= PAST_LEASE
            for s in steps
        ):
            return steps
    raise AssertionError("no schedule of 100 pauses an ordered member past its lease")


@pytest.mark.timeout(300)
async def test_an_ordered_group_under_kills_and_pauses_applies_in_order_once(
    deployment: Deployment, seed: int, log_dir: Path, request: pytest.FixtureRequest
) -> None:
    d = dataclasses.replace(deployment, partitions=PARTITIONS)
    conn = await asyncpg.connect(d.database_url)
    try:
        await conn.execute(
            "INSERT INTO conveyor.topic_layouts (key_prefix, topic, partitions, ordered) "
            "VALUES ($1, $2, $3, true)",
            d.key_prefix,
            d.topic,
            PARTITIONS,
        )
    finally:
        await conn.close()
    workload = Workload(WorkloadConfig(d.database_url, d.schema, seed=seed, rate=30.0))
    pipeline = Pipeline(d, log_dir, relays=3, groups=GROUPS, env={SLEEP_ENV: "0.001"})
    began = time.monotonic()
    async with pipeline:
        # Pauses up to 5 s, one of them past the 2 s lease: another member takes over.
        steps = _schedule(random.Random(seed), pipeline.names())
        attach(request, "fault schedule", describe(steps))
        await pipeline.start()
        workload.start()
        try:
            ran = await run_schedule(pipeline, steps, deadline=FAULTS_FOR + 4)
        finally:
            journal = await workload.stop()
        attach(request, "steps run", describe(ran))
        pipeline.assert_alive()
        await pipeline.wait_serving(timeout=30)
        await settle(d, GROUPS, timeout=90, diagnose=pipeline.tails)
        report = await check(d, GROUPS, journal, seed=seed, ordered=[g.name for g in GROUPS])
        attach(request, "torture report", report.table())
        codes = await asyncio.gather(*(pipeline.terminate(n) for n in pipeline.names()))
        leases = pipeline.grep("lost lease|took over pending")
        attach(
            request,
            "lost leases and takeovers",
            str({n: len(found) for n, found in leases.items()}),
        )
    attach(request, "timing", f"{time.monotonic() - began:.1f}s from the first process start")
    assert set(codes) == {0}, codes
    assert journal.counts()["ok"] > 200, f"too little load to mean anything: {journal.counts()}"
    assert ran, "no fault was injected"
    report.assert_clean()
    assert [g.order for g in report.groups] == [0, 0]
    taken_over = sum(len(found) for found in leases.values())
    assert taken_over, "no lease changed hands: the faults did not exercise the failover"
