"""Health and AdminService latency while the pipeline runs at about half its sustained rate.

    python benchmarks/ops_latency.py [--rate 5000] [--seconds 20] [--calls 2000]

Starts a real `conveyor relay` and a `conveyor consume` (the demo's mailer: one INSERT per event,
exactly-once, which sustains about 10,000 events/s here, so 5,000/s is half), produces events at
`--rate` through the outbox, and meanwhile times unary calls over gRPC: Health.Check("") and
AdminService.GetStatus on the consumer, Health.Check on the relay. Prints p50/p99/max per call
kind and the rate the pipeline actually applied. Never asserts.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admin import migrations
from conveyor import database, wire
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


async def produce(rate: int, seconds: float, run: str) -> int:
    conn = await asyncpg.connect(DB)
    sent, started, tick = 0, time.perf_counter(), 0.01
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(rate * elapsed) - sent
            if due > 0:
                batch = [
                    NewEvent(
                        events_pb2.UserRegistered(
                            user_id=f"{run}-{sent + i}", email="a@example.com"
                        ),
                        "user",
                        f"{run}-{sent + i}",
                        topic="identity",
                    )
                    for i in range(due)
                ]
                async with conn.transaction():
                    await enqueue_many(conn, batch, schema="identity")
                sent += due
            await asyncio.sleep(tick)
    finally:
        await conn.close()
    return sent


def time_calls(port: int, calls: int, kind: str) -> list[float]:
    out = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        admin = admin_pb2_grpc.AdminServiceStub(ch)  # type: ignore[no-untyped-call]
        md = [("authorization", f"Bearer {TOKEN}")]
        for _ in range(calls):
            started = time.perf_counter()
            if kind == "health":
                health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            else:
                admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=md, timeout=5)
            out.append(time.perf_counter() - started)
            time.sleep(0.002)
    return out


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
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--calls", type=int, default=2000)
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
    relay, relay_port = start(["relay", "--schema", "identity"], env)
    consumer, port = start(
        [
            "consume",
            "--group",
            "opsbench",
            "--router",
            "admin.demo:router",
            "--ledger-schema",
            "identity",
        ],
        env,
    )
    try:
        run = f"ops{os.getpid()}"
        producing = asyncio.create_task(produce(a.rate, a.seconds, run))
        await asyncio.sleep(2)  # let the pipeline reach its pace
        # Each caller in a process of its own: threads would share a GIL with the producer and
        # time the benchmark rather than the servers.
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(3) as pool:
            results = await asyncio.gather(
                loop.run_in_executor(pool, time_calls, port, a.calls, "health"),
                loop.run_in_executor(pool, time_calls, port, a.calls, "status"),
                loop.run_in_executor(pool, time_calls, relay_port, a.calls, "health"),
            )
        sent = await producing
        print(f"pipeline: {sent} events produced at a target of {a.rate}/s over {a.seconds:.0f} s")
        show("consumer Health.Check", results[0])
        show("consumer AdminService.GetStatus", results[1])
        show("relay Health.Check", results[2])
    finally:
        for proc in (consumer, relay):
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
