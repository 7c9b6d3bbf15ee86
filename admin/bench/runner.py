"""Runs the scenarios of `conveyor bench` in order, with a progress display."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import psutil

from admin.bench.harness import Bench
from admin.bench.model import Figure
from conveyor import redis_client

Scenario = Callable[[Bench], Awaitable[list[Figure]]]

SCENARIOS: dict[str, tuple[str, str]] = {
    "relay": ("admin.bench.throughput", "relay"),
    "consumer": ("admin.bench.throughput", "consumer"),
    "pipeline": ("admin.bench.pipeline", "run"),
    "latency": ("admin.bench.latency", "run"),
    "cpu": ("admin.bench.cpu", "run"),
    "ops": ("admin.bench.ops", "run"),
    "memory": ("admin.bench.memory", "run"),
    "notify": ("admin.bench.notify", "run"),
}
"""Every scenario, in the order a full run takes them: its module and function."""

DESCRIPTIONS = {
    "relay": "relay rate vs the yardstick's relay loop",
    "consumer": "exactly-once per-event and batch, at-least-once no-op, vs the yardstick",
    "pipeline": "producers, relay and consumer at once vs the slower stage alone",
    "latency": "producer COMMIT to handler, 1 event per transaction, NOTIFY on and off",
    "cpu": "CPU per 1,000 events at 100 %, 50 % and 10 % of the maximum rate",
    "ops": "health and AdminService p99 at 50 % load vs a bare grpc.aio server",
    "memory": "peak RSS of relay and consumer with a small and a large backlog",
    "notify": "producer commits/s with and without the outbox's NOTIFY trigger",
}


def scenario(name: str) -> Scenario:
    module, attr = SCENARIOS[name]
    fn: Scenario = getattr(importlib.import_module(module), attr)
    return fn


async def check_services(bench: Bench) -> dict[str, Any]:
    """What the report says of the machine; raises what asyncpg or redis-py raise when a server
    does not answer."""
    conn = await asyncpg.connect(bench.database_url, timeout=10)
    try:
        pg = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    r = redis_client.connect(bench.redis_url)
    try:
        info = await r.info("server")
    finally:
        await r.aclose()
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "postgresql": pg,
        "redis": info.get("redis_version"),
    }


async def run(bench: Bench, names: Sequence[str]) -> tuple[list[Figure], float]:
    """Every named scenario in turn; the figures and the seconds it all took."""
    started = time.monotonic()
    figures: list[Figure] = []
    for name in names:
        bench.progress.stage(f"{name}: {DESCRIPTIONS[name]}")
        figures.extend(await scenario(name)(bench))
    return figures, time.monotonic() - started
