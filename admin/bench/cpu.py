"""CPU cost of the pipeline per 1,000 events: relay, consumer, PostgreSQL and Redis, at 100 %,
50 % and 10 % of the maximum sustained rate (everyday rates should not cost much more per
event than flat out does)."""

from __future__ import annotations

import asyncio
import time

from admin.bench.harness import Bench
from admin.bench.meter import CpuCost, CpuMeter
from admin.bench.model import Figure, Target
from admin.bench.pipeline import Running, everyday_load, max_sustained_rate, running

UNIT = "ms CPU / 1,000 events"
AT_MAX = "CPU per 1,000 events at 100 %"
WARM_UP = 1.0
"""Seconds each paced load runs before its window opens."""
LEVELS = ((0.5, 1.3), (0.1, 2.0))
"""Share of the maximum rate, and the most its CPU per event may be, as a ratio to 100 %."""


async def run(bench: Bench) -> list[Figure]:
    maximum = await max_sustained_rate(bench)
    at_max: CpuCost = bench.shared["cpu_at_max"]
    figures = [
        Figure(
            "cpu",
            AT_MAX,
            at_max.per_1000(),
            UNIT,
            detail=f"{at_max.events:,} events flat out ({maximum:,.0f}/s), 100 per transaction"
            f" on 2 connections; {at_max.split()} (postgres: the backends serving relay and"
            " consumer and the server's own processes; redis: the whole server)",
        )
    ]
    async with running(bench) as pipe:
        for share, bound in LEVELS:
            cost, achieved = await _level(bench, pipe, share * maximum)
            figures.append(
                Figure(
                    "cpu",
                    f"CPU per 1,000 events at {share * 100:.0f} %",
                    cost.per_1000(),
                    UNIT,
                    at_max.per_1000(),
                    AT_MAX,
                    Target("ratio<=", bound),
                    _detail(share * maximum, achieved, cost),
                )
            )
    return figures


async def _level(bench: Bench, pipe: Running, rate: float) -> tuple[CpuCost, float]:
    """What `rate` events/s offered costs over sizes.cpu_seconds, and the rate the producers
    achieved; returns once the backlog has drained, so the next level starts empty."""
    seconds = bench.sizes.cpu_seconds
    bench.progress.stage(
        f"cpu: {rate:,.0f} events/s, one per transaction on 4 connections", WARM_UP + seconds
    )
    async with everyday_load(bench, pipe, rate) as paced:
        await asyncio.sleep(WARM_UP)
        meter = CpuMeter(pipe.procs, bench.database_url)
        applied, committed = await pipe.applied(), paced.committed
        meter.start()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            paced.check()
            bench.progress.advance(WARM_UP + elapsed)
            await asyncio.sleep(min(0.25, seconds - elapsed))
        applied = await pipe.applied() - applied
        elapsed = time.monotonic() - started
        cost = meter.stop(applied, elapsed, paced.backends)
        achieved = (paced.committed - committed) / elapsed
    await pipe.wait_applied(paced.committed)
    return cost, achieved


def _detail(offered: float, achieved: float, cost: CpuCost) -> str:
    short = " (the producers fell short)" if achieved < 0.95 * offered else ""
    return (
        f"offered {offered:,.0f}/s, achieved {achieved:,.0f}/s{short}; {cost.events:,} events"
        f" applied in {cost.seconds:.1f} s, one per transaction on 4 connections; {cost.split()}"
    )
