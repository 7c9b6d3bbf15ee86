"""The ops scenario's own gRPC ends, each in a process of its own: a bare grpc.aio health server
(the floor: what this machine allows any Python gRPC server under the same load) and the one
caller that times unary calls to every target in turn."""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from conveyor.v1 import admin_pb2, admin_pb2_grpc

CALLS = (
    "consumer Health.Check",
    "consumer AdminService.GetStatus",
    "relay Health.Check",
    "bare grpc.aio Health.Check",
)
"""What `time_calls` times, in its order; the last is the floor."""

GAP = 0.003
"""Seconds between calls: probes call now and then, not back to back."""

WARM_UP_ROUNDS = 3
"""Untimed rounds first, so a new channel's connecting is not timed."""


@dataclass(frozen=True, slots=True)
class Ports:
    """Where the consumer, the relay and the floor server listen on 127.0.0.1."""

    consumer: int
    relay: int
    floor: int


def serve_floor() -> None:
    """Serve grpc.health.v1.Health (SERVING) on a free loopback port, printed on stdout, until
    terminated."""
    asyncio.run(_serve())


async def _serve() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def start_floor(wait: float = 30.0) -> tuple[subprocess.Popen[str], int]:
    """The floor server's process, and its port once it listens (at most `wait` seconds)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from admin.bench.probe import serve_floor; serve_floor()"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], wait)
    line = proc.stdout.readline() if ready else ""
    if line.strip().isdigit():
        return proc, int(line)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"the bare gRPC server did not start (exit {proc.returncode})")


def time_calls(ports: Ports, token: str, rounds: int) -> list[list[float]]:
    """Milliseconds per call of each of CALLS, called in turn `rounds` times, GAP apart.

    One caller, interleaved: every target sees the same moments of load, and the caller's own
    CPU is not a load of its own. Runs in a process of its own, so that it shares no GIL with
    the producers and times the servers, not the bench."""
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}")
        for port in (ports.consumer, ports.relay, ports.floor)
    ]
    check = health_pb2.HealthCheckRequest(service="")
    status = admin_pb2.GetStatusRequest()
    bearer = [("authorization", f"Bearer {token}")]
    consumer, relay, floor = (health_pb2_grpc.HealthStub(c) for c in channels)
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])  # type: ignore[no-untyped-call]
    calls: tuple[Callable[[], object], ...] = (
        lambda: consumer.Check(check, timeout=5),
        lambda: admin.GetStatus(status, metadata=bearer, timeout=5),
        lambda: relay.Check(check, timeout=5),
        lambda: floor.Check(check, timeout=5),
    )
    out: list[list[float]] = [[] for _ in calls]
    try:
        for n in range(WARM_UP_ROUNDS + rounds):
            for name, samples, call in zip(CALLS, out, calls, strict=True):
                started = time.perf_counter()
                try:
                    call()
                except grpc.RpcError as exc:  # one that pickles, to cross back to the bench
                    raise RuntimeError(f"{name}: {exc.code()} {exc.details()}") from None
                if n >= WARM_UP_ROUNDS:
                    samples.append((time.perf_counter() - started) * 1000)
                time.sleep(GAP)
    finally:
        for channel in channels:
            channel.close()
    return out
