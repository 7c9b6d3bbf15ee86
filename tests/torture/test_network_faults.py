"""Network faults between the processes and PostgreSQL or Redis, while producers commit: on each
link (relays to PostgreSQL, relays to Redis, consumers to PostgreSQL, consumers to Redis) a seeded
schedule runs latency with jitter, a reset in the middle of a command, a blackhole, a half-open
server and a partition, one after the other, through a FaultProxy. The processes on the link say
NOT_SERVING while a blackhole, half-open server or partition lasts (they notice the silent ones
within their dependency timeout) and SERVING after it heals; then nothing committed is lost,
nothing of a failed transaction has an effect, and no exactly-once group applies anything twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.deployment import Deployment, Group
from tests.torture.faultproxy import FaultProxy
from tests.torture.pipeline import CONSUME_ARGS, RELAY_ARGS, Pipeline
from tests.torture.workload import Workload, WorkloadConfig

pytestmark = pytest.mark.slow

Link = Literal["relay-postgres", "relay-redis", "consumer-postgres", "consumer-redis"]
LINKS: tuple[Link, ...] = ("relay-postgres", "relay-redis", "consumer-postgres", "consumer-redis")
Kind = Literal["latency", "reset", "blackhole", "half_open", "partition"]
KINDS: tuple[Kind, ...] = ("latency", "reset", "blackhole", "half_open", "partition")
SILENT: tuple[Kind, ...] = ("blackhole", "half_open", "partition")
"""Faults the processes on the link must report while they last."""

TIMEOUT = 1.5
"""The processes' --dependency-timeout: short, so a silent link is noticed in a few seconds."""
NOTICE = 15.0
"""Seconds a process may take to report a fault (a few timeouts, on a loaded machine)."""
RECOVER = 20.0
"""Seconds a process may take to say SERVING again once the link healed."""
OVERRIDES: dict[Link, str] = {
    "relay-postgres": "relay_database_url",
    "relay-redis": "relay_redis_url",
    "consumer-postgres": "consumer_database_url",
    "consumer-redis": "consumer_redis_url",
}
GROUPS = (Group("eo-a"), Group("alo-c", exactly_once=False))
"""An exactly-once group (no duplicate allowed) and an at-least-once one (no loss allowed)."""


@dataclass(frozen=True)
class Fault:
    """One fault of a link's schedule: held for `hold` seconds (a silent one at least until
    every process on the link reported it), then healed."""

    kind: Kind
    hold: float
    latency: float = 0.0
    jitter: float = 0.0
    after_bytes: int = 0
    """For a reset: the client bytes forwarded before the cut (mid-command)."""

    def __str__(self) -> str:
        detail = {
            "latency": f" {self.latency * 1000:.0f} ms + up to {self.jitter * 1000:.0f} ms",
            "reset": f" after {self.after_bytes} bytes",
        }.get(self.kind, "")
        return f"{self.kind}{detail} for {self.hold:.1f}s"


def make_faults(rng: random.Random) -> list[Fault]:
    """Every kind once, in a seeded order, with seeded parameters."""
    kinds = list(KINDS)
    rng.shuffle(kinds)
    faults = []
    for kind in kinds:
        if kind == "latency":
            hold, latency, jitter = rng.uniform(2.0, 3.0), rng.uniform(0.01, 0.1), 0.1
            faults.append(Fault(kind, round(hold, 1), round(latency, 3), jitter))
        elif kind == "reset":
            faults.append(Fault(kind, 1.0, after_bytes=rng.randint(1, 300)))
        else:
            faults.append(Fault(kind, round(rng.uniform(2 * TIMEOUT, 2 * TIMEOUT + 1.5), 1)))
    return faults


class LinkUnderFault:
    """A FaultProxy on one link, the Pipeline's processes on it, and health checks of those."""

    def __init__(self, link: Link, deployment: Deployment) -> None:
        self.link = link
        side, server = link.split("-")
        url = deployment.database_url if server == "postgres" else deployment.redis_url
        self.proxy = FaultProxy.for_url(url)
        self.url = self.proxy.url(url)
        self.kind = "relay" if side == "relay" else "consume"
        self.override = OVERRIDES[link]
        """The Pipeline's argument that points the processes on the link at the proxy."""

    async def statuses(self, pipeline: Pipeline) -> dict[str, str]:
        names = pipeline.names(self.kind)
        found = await asyncio.gather(*(pipeline.health(n) for n in names))
        return dict(zip(names, found, strict=True))

    async def until(self, pipeline: Pipeline, want: str, timeout: float, what: str) -> float:
        """Wait until every process on the link answers `want`; the seconds it took."""
        began = time.monotonic()
        while True:
            statuses = await self.statuses(pipeline)
            if all(s == want for s in statuses.values()):
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise AssertionError(
                    f"{self.link}: {what}: not all {want} after {timeout}s: {statuses}\n"
                    + "\n".join(pipeline.tail(n, 8) for n in statuses)
                )
            await asyncio.sleep(0.2)

    async def run(self, pipeline: Pipeline, fault: Fault) -> str:
        """Inject `fault`, hold it, heal it, wait for SERVING; a line saying how it went."""
        proxy, began = self.proxy, time.monotonic()
        noticed = ""
        if fault.kind == "latency":
            proxy.latency(fault.latency, fault.jitter)
            await asyncio.sleep(fault.hold)
            proxy.latency(0)
        elif fault.kind == "reset":
            before = proxy.counters().resets
            proxy.reset(after_bytes=fault.after_bytes)
            await asyncio.sleep(fault.hold)
            if proxy.counters().resets == before:  # no client sent that much meanwhile
                proxy.reset()
        else:
            getattr(proxy, fault.kind)()
            try:
                took = await self.until(pipeline, "NOT_SERVING", NOTICE, f"during {fault.kind}")
                noticed = f", NOT_SERVING after {took:.1f}s"
                await asyncio.sleep(max(0.0, began + fault.hold - time.monotonic()))
            finally:
                proxy.heal()
        recovered = await self.until(pipeline, "SERVING", RECOVER, f"after {fault.kind}")
        return f"{fault}{noticed}, SERVING {recovered:.1f}s after the heal"


def args_with_timeout(args: Sequence[str]) -> list[str]:
    return [*args, "--dependency-timeout", f"{TIMEOUT}s"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("link", LINKS)
async def test_network_faults_on_a_link_lose_and_double_nothing(
    link: Link, deployment: Deployment, seed: int, log_dir: Path, request: pytest.FixtureRequest
) -> None:
    faults = make_faults(random.Random(f"{seed}:{link}"))
    attach(request, "fault schedule", "\n".join(str(f) for f in faults))
    target = LinkUnderFault(link, deployment)
    workload = Workload(
        WorkloadConfig(deployment.database_url, deployment.schema, seed=seed, rate=40.0)
    )
    began = time.monotonic()
    marks: list[str] = []

    def mark(what: str) -> None:
        marks.append(f"{time.monotonic() - began:5.1f}s {what}")

    try:
        async with Pipeline(
            deployment,
            log_dir,
            relays=1,
            groups=GROUPS,
            relay_args=args_with_timeout(RELAY_ARGS),
            consume_args=args_with_timeout(CONSUME_ARGS),
            **{target.override: target.url},
        ) as pipeline:
            await pipeline.start()
            await pipeline.wait_serving(timeout=30)
            mark("every process serving")
            workload.start()
            ran = []
            try:
                for fault in faults:
                    ran.append(await target.run(pipeline, fault))
            finally:
                attach(request, "faults run", "\n".join(ran))
                journal = await workload.stop()
                mark("faults over, producers stopped")
            pipeline.assert_alive()
            await settle(deployment, GROUPS, timeout=40, diagnose=pipeline.tails)
            mark("settled")
            report = await check(deployment, GROUPS, journal, seed=seed)
            attach(request, "torture report", report.table())
            codes = await asyncio.gather(*(pipeline.terminate(n) for n in pipeline.names()))
            mark("checked, every process stopped")
    finally:
        target.proxy.close()
        attach(request, "timing, from the first process start", "\n".join(marks))
    assert set(codes) == {0}, codes
    assert journal.counts()["ok"] > 200, f"too little load to mean anything: {journal.counts()}"
    report.assert_clean()
