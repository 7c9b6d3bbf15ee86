"""The memory and NOTIFY scenarios of `conveyor bench` on tiny sizes: every figure is there, in its
unit, with its baseline and target, and the scratch schemas and keys are gone afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import redis.asyncio as aioredis

from admin.bench import memory, notify
from admin.bench.harness import Bench, Scratch
from admin.bench.model import Sizes


class Recorder:
    """A Progress that keeps what it was told."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float | None]] = []
        self.done: list[float] = []

    def stage(self, text: str, total: float | None = None) -> None:
        self.stages.append((text, total))

    def advance(self, done: float) -> None:
        self.done.append(done)


class Watched(Bench):
    """A Bench that remembers the scratch schemas and prefixes it made."""

    made: list[Scratch]

    @asynccontextmanager
    async def scratch(self) -> AsyncIterator[Scratch]:
        async with super().scratch() as s:
            self.made.append(s)
            yield s


def watched(database_url: str, redis_url: str, sizes: Sizes, progress: Recorder) -> Watched:
    bench = Watched(database_url, redis_url, sizes, progress)
    bench.made = []
    return bench


async def assert_removed(bench: Watched) -> None:
    """Every scratch schema and key the scenario made is gone."""
    assert bench.made
    conn = await asyncpg.connect(bench.database_url)
    try:
        for s in bench.made:
            assert await conn.fetchval("SELECT to_regnamespace($1)", s.schema) is None
    finally:
        await conn.close()
    r = aioredis.from_url(bench.redis_url)
    try:
        for s in bench.made:
            assert [k async for k in r.scan_iter(match=f"{s.prefix}:*")] == []
    finally:
        await r.aclose()


async def test_memory_reports_relay_and_consumer_peaks_for_both_backlogs(
    database_url: str, redis_url: str
) -> None:
    sizes = Sizes(backlog_small=300, backlog_large=1500, batch=100)
    progress = Recorder()
    bench = watched(database_url, redis_url, sizes, progress)

    figures = await memory.run(bench)

    assert [f.name for f in figures] == [
        "relay peak RSS, 300 backlog",
        "relay peak RSS, 1,500 backlog",
        "consumer peak RSS, 300 backlog",
        "consumer peak RSS, 1,500 backlog",
    ]
    small_relay, large_relay, small_consumer, large_consumer = figures
    for f in figures:
        assert f.scenario == "memory" and f.unit == "MiB"
        assert 10 < f.value < 4096  # a Python process with its imports, not bytes nor KiB
    for small, large in ((small_relay, large_relay), (small_consumer, large_consumer)):
        assert small.baseline is None and small.target is None
        assert large.baseline == small.value
        assert large.target is not None and str(large.target) == "<= 1.2x"
    assert "exactly-once batch handler" in small_consumer.detail
    assert any(text.startswith("memory: relay draining 1,500") for text, _ in progress.stages)
    assert progress.done and max(progress.done) == 1500
    await assert_removed(bench)


async def test_notify_reports_commit_rates_with_and_without_the_trigger(
    database_url: str, redis_url: str
) -> None:
    sizes = Sizes(notify_seconds=0.3, notify_connections=(1, 4))
    bench = watched(database_url, redis_url, sizes, Recorder())

    figures = await notify.run(bench)

    assert [f.name for f in figures] == [
        "producer commits/s with the NOTIFY trigger, 1 connection",
        "producer commits/s with the NOTIFY trigger, 4 connections",
    ]
    for f in figures:
        assert f.scenario == "notify" and f.unit == "commits/s"
        assert f.value > 0 and f.baseline is not None and f.baseline > 0
        assert f.baseline_name == "the same without the trigger"
        assert "single-event transactions" in f.detail
    assert figures[0].target is None
    assert figures[1].target is not None and str(figures[1].target) == ">= 0.9x"
    await assert_removed(bench)
