"""Health and AdminService latency while the pipeline runs at half its maximum sustained rate.

    python benchmarks/ops_latency.py [--calls 1500] [--rate N] [--load 0.5]

Starts a real `conveyor relay` and a `conveyor consume` (the demo's mailer: one INSERT per event,
exactly-once). First it finds the pipeline's maximum sustained rate on this machine: it produces
through the outbox as fast as it can for `--probe-seconds` and counts what the consumer applied
(producer, relay, consumer, PostgreSQL and Redis all share the machine, as they do in the
timed phase). After the backlog drains it produces at `--load` times that rate (or at `--rate`)
and meanwhile times unary calls over gRPC from one caller process, in turn, 3 ms apart:
Health.Check("") and AdminService.GetStatus on the consumer, Health.Check on the relay, and
Health.Check on a bare grpc.aio health server in a process of its own (the floor: what this
machine allows any Python gRPC server under the same load). Prints p50/p99/max per call kind.
Never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admin import migrations
from admin.cli import demo
from conveyor import database, redis_client, wire
from conveyor.identity.v1 import events_pb2
from conveyor.v1 import admin_pb2, admin_pb2_grpc
from relay import NewEvent, enqueue_many

DB = os.environ.get("CONVEYOR_DATABASE_URL", database.DEFAULT_DATABASE_URL)
REDIS = os.environ.get("CONVEYOR_REDIS_URL", wire.DEFAULT_REDIS_URL)
CONVEYOR = str(Path(sys.executable).with_name("conveyor"))
TOKEN = "bench-reader"


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [CONVEYOR, *args, "--grpc-addr", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"gRPC listening on [\d.]+:(\d+)", line)
        if m:
            # Keep reading what it logs, or a full pipe would stall the process.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit(f"{args[0]} did not start")


FLOOR_SERVER = """
import asyncio
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""
"""The floor: a bare grpc.aio health server in a process that does nothing else. It shows what
the machine itself allows a Python gRPC server under the same load."""


def start_floor() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def produce(
    rate: float, run: str, *, seconds: float = float("inf"), stop: asyncio.Event | None = None
) -> int:
    """Events produced at `rate` per second (as fast as possible when infinite) for `seconds`
    or until `stop` is set."""
    conn = await asyncpg.connect(DB)
    sent, started, tick = 0, time.perf_counter(), 0.01
    try:
        while (elapsed := time.perf_counter() - started) < seconds and not (stop and stop.is_set()):
            due = int(rate * elapsed) - sent if rate != float("inf") else 500
            if due > 0:
                batch = [
                    NewEvent(
                        events_pb2.UserRegistered(
                            user_id=f"{run}-{sent + i}", email="a@example.com"
                        ),
                        "user",
                        f"{run}-{sent + i}",
                        topic=demo.TOPIC,
                        headers={demo.SCHEMA_HEADER: "identity"},  # where its mails go
                    )
                    for i in range(due)
                ]
                async with conn.transaction():
                    await enqueue_many(conn, batch, schema="identity")
                sent += due
            if rate != float("inf"):
                await asyncio.sleep(tick)
    finally:
        await conn.close()
    return sent


TARGETS = (
    "consumer Health.Check",
    "consumer AdminService.GetStatus",
    "relay Health.Check",
    "floor: bare Health.Check",
)


def time_calls(consumer: int, relay: int, floor: int, rounds: int) -> list[list[float]]:
    """Seconds per call of each of TARGETS, called in turn `rounds` times, 3 ms apart.

    One caller, interleaved: every target sees the same moments of load, and the callers' own
    CPU does not become a load of its own (probes call every few seconds, not hundreds of times).
    """
    channels = [grpc.insecure_channel(f"127.0.0.1:{p}") for p in (consumer, relay, floor)]
    to_consumer = channels[0]
    check = health_pb2.HealthCheckRequest(service="")
    md = [("authorization", f"Bearer {TOKEN}")]
    admin = admin_pb2_grpc.AdminServiceStub(to_consumer)  # type: ignore[no-untyped-call]
    status = admin_pb2.GetStatusRequest()
    health = [health_pb2_grpc.HealthStub(c) for c in channels]
    calls: tuple[Callable[[], object], ...] = (
        lambda: health[0].Check(check, timeout=5),
        lambda: admin.GetStatus(status, metadata=md, timeout=5),
        lambda: health[1].Check(check, timeout=5),
        lambda: health[2].Check(check, timeout=5),
    )
    out: list[list[float]] = [[] for _ in calls]
    try:
        for _ in range(rounds):
            for samples, call in zip(out, calls, strict=True):
                started = time.perf_counter()
                call()
                samples.append(time.perf_counter() - started)
                time.sleep(0.003)
    finally:
        for channel in channels:
            channel.close()
    return out


async def applied(conn: asyncpg.Connection, run: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM identity.demo_mail WHERE user_id LIKE $1", f"{run}-%"
        )
    )


async def sustained_rate(seconds: float, run: str) -> float:
    """Events/s the consumer applies while the producer writes the outbox flat out."""
    conn = await asyncpg.connect(DB)
    try:
        producing = asyncio.create_task(produce(float("inf"), run, seconds=seconds))
        await asyncio.sleep(min(3.0, seconds / 3))  # past the start-up
        first, started = await applied(conn, run), time.perf_counter()
        await producing
        rate = (await applied(conn, run) - first) / (time.perf_counter() - started)
        total = producing.result()
        while await applied(conn, run) < total:  # the timed phase starts with no backlog
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    return rate


def show(name: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(
        f"{name:28s} p50 {statistics.median(samples) * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms"
        f"  max {samples[-1] * 1000:6.2f} ms  ({len(samples)} calls)"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=int, help="events/s to produce (default: --load x maximum)")
    ap.add_argument("--load", type=float, default=0.5, help="fraction of the maximum rate")
    ap.add_argument("--probe-seconds", type=float, default=15, help="length of the rate probe")
    ap.add_argument("--calls", type=int, default=1500, help="calls to each target")
    a = ap.parse_args()
    await asyncio.to_thread(migrations.upgrade, DB, "identity")
    conn = await asyncpg.connect(DB)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS identity.demo_mail (user_id text NOT NULL, "
        "kind text NOT NULL, sent_at timestamptz NOT NULL DEFAULT now())"
    )
    await conn.close()
    tokens = Path(tempfile.mkdtemp()) / "tokens"
    tokens.write_text(f"bench read {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    prefix = f"opsbench{os.getpid()}"
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": DB,
        "CONVEYOR_REDIS_URL": REDIS,
        "CONVEYOR_KEY_PREFIX": prefix,
        "CONVEYOR_LOG_LEVEL": "info",
        "CONVEYOR_TOKENS_FILE": str(tokens),
    }
    relay, relay_port = start(["relay", "--schema", "identity", "--retention", "0"], env)
    consumer, port = start(
        [
            "consume",
            "--group",
            "opsbench",
            "--router",
            "admin.cli.demo:router",
            "--ledger-schema",
            "identity",
        ],
        env,
    )
    run = f"ops{os.getpid()}"
    floor, floor_port = start_floor()
    try:
        rate = a.rate
        if rate is None:
            maximum = await sustained_rate(a.probe_seconds, run)
            rate = int(maximum * a.load)
            print(
                f"maximum sustained rate: {maximum:,.0f} events/s applied; "
                f"load: {a.load:.0%} = {rate:,}/s"
            )
        stop = asyncio.Event()
        producing = asyncio.create_task(produce(rate, f"{run}-timed", stop=stop))
        started = time.perf_counter()
        await asyncio.sleep(2)  # let the pipeline reach its pace
        # The caller in a process of its own: a thread would share a GIL with the producer and
        # time the benchmark rather than the servers.
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(1) as pool:
            results = await loop.run_in_executor(
                pool, time_calls, port, relay_port, floor_port, a.calls
            )
        stop.set()
        sent, seconds = await producing, time.perf_counter() - started
        print(f"pipeline: {sent} events produced at a target of {rate}/s over {seconds:.0f} s")
        for name, samples in zip(TARGETS, results, strict=True):
            show(name, samples)
    finally:
        for proc in (consumer, relay, floor):
            proc.terminate()
            proc.wait(30)
        await clean_up(prefix, run)


async def clean_up(prefix: str, run: str) -> None:
    """Remove what the run left: its streams, its mails and the bench group's ledger rows."""
    client = redis_client.connect(REDIS)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    conn = await asyncpg.connect(DB)
    try:
        await conn.execute("DELETE FROM identity.demo_mail WHERE user_id LIKE $1", f"{run}-%")
        await conn.execute(
            f"DELETE FROM identity.{database.LEDGER_TABLE} WHERE consumer_group = 'opsbench'"
        )
        await conn.execute(
            f"DELETE FROM {database.CATALOG_SCHEMA}.{database.CONSUMERS_TABLE} "
            "WHERE consumer_group = 'opsbench'"
        )
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
