"""Health and AdminService unary latency of `conveyor relay` and `conveyor consume`: at 50 % of
the maximum sustained rate, next to a bare grpc.aio server timed in the same window, and with
no load."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import secrets
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

from admin.bench import probe
from admin.bench.harness import Bench
from admin.bench.model import Figure, Target
from admin.bench.pipeline import everyday_load, max_sustained_rate, running
from admin.ops.tokens import token_digest

LOAD_SHARE = 0.5
"""The load, as a share of the maximum sustained rate."""
WARM_UP = 1.5
"""Seconds the load runs before the calls are timed."""
CHUNKS = 10
"""The calls go out in this many parts, so the progress display moves."""
BARE = "bare grpc.aio Health.Check"


async def run(bench: Bench) -> list[Figure]:
    maximum = await max_sustained_rate(bench)
    rate = LOAD_SHARE * maximum
    token = secrets.token_urlsafe(32)
    spawn = multiprocessing.get_context("spawn")  # a fork would copy the bench's threads
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-bench-") as folder,
        ProcessPoolExecutor(1, mp_context=spawn) as caller,
    ):
        tokens = Path(folder) / "tokens"
        tokens.write_text(f"bench read {token_digest(token)}\n", encoding="utf-8")
        floor, floor_port = await asyncio.to_thread(probe.start_floor)
        try:
            async with running(bench, env={"CONVEYOR_TOKENS_FILE": str(tokens)}) as pipe:
                ports = probe.Ports(pipe.consumer.port, pipe.relay.port, floor_port)
                idle = await _timed(bench, caller, ports, token, "no load")
                bench.progress.stage(f"ops: {rate:,.0f} events/s, warming up")
                async with everyday_load(bench, pipe, rate) as paced:
                    await asyncio.sleep(WARM_UP)
                    committed, started = paced.committed, time.monotonic()
                    busy = await _timed(bench, caller, ports, token, f"{rate:,.0f} events/s")
                    achieved = (paced.committed - committed) / (time.monotonic() - started)
        finally:
            await asyncio.to_thread(_stop, floor)
    load = (
        f"load {achieved:,.0f}/s achieved of {rate:,.0f}/s offered"
        f" ({LOAD_SHARE * 100:.0f} % of {maximum:,.0f}), one event per transaction"
    )
    return _figures(bench, busy, load) + _figures(bench, idle, None)


async def _timed(
    bench: Bench, caller: Executor, ports: probe.Ports, token: str, what: str
) -> list[list[float]]:
    """sizes.ops_calls timed calls to each of probe.CALLS, in milliseconds."""
    n = bench.sizes.ops_calls
    bench.progress.stage(f"ops: {n:,} calls to each target, {what}", n)
    out: list[list[float]] = [[] for _ in probe.CALLS]
    loop = asyncio.get_running_loop()
    part = math.ceil(n / CHUNKS)
    while (done := len(out[0])) < n:
        more = await loop.run_in_executor(
            caller, probe.time_calls, ports, token, min(part, n - done)
        )
        for samples, new in zip(out, more, strict=True):
            samples.extend(new)
        bench.progress.advance(len(out[0]))
    return out


def _figures(bench: Bench, samples: list[list[float]], load: str | None) -> list[Figure]:
    """One figure per Conveyor target: its p99 against the bare server's. Under load the target
    is that ratio; with no load (`load` None) an absolute 5 ms."""
    floor = samples[-1]
    how = f"{bench.sizes.ops_calls:,} calls each from one caller, interleaved ~3 ms apart"
    out = []
    for name, times in zip(probe.CALLS[:-1], samples[:-1], strict=True):
        p50 = f"p50 {statistics.median(times):.2f} ms, bare {statistics.median(floor):.2f} ms"
        out.append(
            Figure(
                "ops",
                f"{name} p99, {'no load' if load is None else f'{LOAD_SHARE * 100:.0f} % load'}",
                p99(times),
                "ms",
                p99(floor),
                f"{BARE}, {'no load' if load is None else 'same window'}",
                Target("value<=", 5.0) if load is None else Target("ratio<=", 1.2),
                f"{p50}; {how}" + (f"; {load}" if load else ""),
            )
        )
    return out


def p99(samples: list[float]) -> float:
    """The 99th percentile, nearest rank."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
