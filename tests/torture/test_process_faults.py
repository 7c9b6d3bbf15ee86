"""Relays and consumers killed, paused and stopped at random while producers commit: no event of
a committed transaction is lost, none is applied twice by an exactly-once group, none of a
failed transaction ever has an effect, and every process stops cleanly afterwards."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.torture.chaos import describe, make_schedule, run_schedule
from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.deployment import DEFAULT_GROUPS, Deployment
from tests.torture.pipeline import Pipeline
from tests.torture.router import SLEEP_ENV
from tests.torture.workload import Workload, WorkloadConfig

pytestmark = pytest.mark.slow

FAULTS_FOR = 20.0
"""Seconds of the schedule; steps that cannot begin by FAULTS_FOR + 4 s (a loaded machine starts
processes slowly) are skipped, which bounds the fault phase."""


@pytest.mark.timeout(240)
async def test_processes_killed_paused_and_stopped_under_load_lose_and_double_nothing(
    deployment: Deployment, seed: int, log_dir: Path, request: pytest.FixtureRequest
) -> None:
    groups = DEFAULT_GROUPS  # eo-a and eo-b exactly-once, alo-c at-least-once, 1 member each
    workload = Workload(
        WorkloadConfig(deployment.database_url, deployment.schema, seed=seed, rate=40.0)
    )
    # A handler sleeps 1 ms in its transaction: kills land mid-transaction more often.
    pipeline = Pipeline(deployment, log_dir, relays=2, groups=groups, env={SLEEP_ENV: "0.001"})
    began = time.monotonic()
    async with pipeline:
        steps = make_schedule(random.Random(seed), pipeline.names(), FAULTS_FOR, gap=(2.0, 4.0))
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
        await settle(deployment, groups, timeout=60, diagnose=pipeline.tails)
        report = await check(deployment, groups, journal, seed=seed)
        attach(request, "torture report", report.table())
        codes = await asyncio.gather(*(pipeline.terminate(n) for n in pipeline.names()))
        attach(request, "seconds to listen, per start", str(pipeline.startup_times))
        errors = pipeline.grep(r" (ERROR|CRITICAL) ")
        lines = [f"{name}: {line}" for name, found in errors.items() for line in found]
        attach(request, "ERROR lines in the logs", "\n".join(lines) or "none")
        reclaims = pipeline.grep("reclaimed entries")
        attach(request, "reclaims", str({name: len(found) for name, found in reclaims.items()}))
    attach(request, "timing", f"{time.monotonic() - began:.1f}s from the first process start")
    assert set(codes) == {0}, codes
    assert journal.counts()["ok"] > 300, f"too little load to mean anything: {journal.counts()}"
    assert ran, "no fault was injected"
    report.assert_clean()
