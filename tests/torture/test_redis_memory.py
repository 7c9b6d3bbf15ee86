"""Redis memory under the whole pipeline, on throwaway Redis servers (these tests change their
maxmemory with CONFIG SET, which the shared Redis must never see).

Out of memory: two relays, three groups (one of them dead-lettering a seeded share of poison
events) and producers run against a Redis with `noeviction` and room to spare; then another
user's key fills it and its maxmemory is set a little above what it then uses, so the producers'
events soon reach the limit. From there Redis refuses the relays' XADDs: the rows stay in the
outbox (its unpublished count grows while producers keep committing), the relays are unready
with a reason naming maxmemory in their health and in `conveyor status`, and the consumers go on
reading and acknowledging what Redis holds, holding the dead letters it refuses. Deleting that
key frees memory: with nothing restarted, everything flows, settles, and the check counts nothing
lost, doubled, phantom or misrouted.

Evicting policy: a pipeline started against a Redis with `maxmemory-policy allkeys-lru` says, in
every relay's and consumer's log at start, that this misconfiguration can lose streams, and
`conveyor status` shows each of them DEGRADED with that reason; events still flow.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.exceptions import RedisError

from admin.ops.redis_memory import eviction_risk
from conveyor import redis_client
from tests.processes import run_conveyor, wait_until
from tests.servers import RedisServer
from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.deployment import DEFAULT_GROUPS, Deployment, prepare
from tests.torture.pipeline import CONSUME_ARGS, Pipeline
from tests.torture.router import POISON_GROUP_ENV
from tests.torture.workload import Journal, Workload, WorkloadConfig

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
FILLER = "cache:filler"
"""A key of another user of the Redis, outside the deployment's prefix: deleting it frees the
memory."""
FILLER_BYTES = 8 * MIB
ROOM = 192 * 1024
"""Bytes of maxmemory left above what Redis uses once filled: a few seconds of the producers'
events (about 600 bytes each, some 70 a second)."""
POISON_GROUP = "eo-b"
READ_TOKEN = "torture-operator-secret"
RELAYS = ("relay-0", "relay-1")
Answer = dict[str, Any]


def tokens_file(tmp_path: Path) -> Path:
    """A tokens file granting READ_TOKEN read scope: `conveyor status` as an operator runs it."""
    path = tmp_path / "tokens"
    path.write_text(f"operator read {hashlib.sha256(READ_TOKEN.encode()).hexdigest()}\n")
    return path


@pytest.fixture
def noeviction_redis() -> Iterator[RedisServer]:
    """A throwaway Redis configured as Conveyor wants it: a maxmemory, and `noeviction`."""
    with RedisServer(config=("--maxmemory", "64mb", "--maxmemory-policy", "noeviction")) as s:
        yield s


@pytest.fixture
def evicting_redis() -> Iterator[RedisServer]:
    """A throwaway Redis configured as a cache: it evicts any key when memory runs out."""
    with RedisServer(config=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")) as s:
        yield s


async def deploy(database_url: str, server: RedisServer, schema: str, prefix: str) -> Deployment:
    """The scenario's deployment: the shared PostgreSQL (a fresh schema), the throwaway Redis."""
    deployment = Deployment(database_url, server.url, schema, prefix)
    await prepare(deployment)
    return deployment


async def status(pipeline: Pipeline, name: str) -> Answer:
    """`conveyor status --json --target <the process's address>`, as an operator runs it."""
    address = pipeline.grpc_address(name)
    assert address is not None, f"{name} is not listening"
    args = ["status", "--json", "--target", address]
    done = await asyncio.to_thread(run_conveyor, args, {"CONVEYOR_ADMIN_TOKEN": READ_TOKEN}, 60)
    assert done.returncode == 0, f"conveyor status of {name}: {done.stderr}{done.stdout}"
    answer: Answer = json.loads(done.stdout)
    return answer


async def status_until(
    pipeline: Pipeline, name: str, wanted: Callable[[Answer], bool], what: str
) -> Answer:
    """`status` of `name` until `wanted` holds (20 s at most): Redis at its limit hovers around
    it, so one answer may fall in a moment it has just freed a few bytes."""
    answers: list[Answer] = []

    async def shown() -> bool:
        answers.append(await status(pipeline, name))
        return wanted(answers[-1])

    try:
        await wait_until(shown, timeout=20, interval=0.5, what=f"{name}'s status: {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer: {answers[-1]}") from None
    return answers[-1]


def reasons(answer: Answer) -> list[str]:
    return [r for c in answer.get("components", []) for r in c.get("reasons", [])]


async def unpublished(deployment: Deployment) -> int:
    conn = await asyncpg.connect(deployment.database_url, timeout=5)
    try:
        query = f"SELECT count(*) FROM {deployment.schema}.outbox WHERE published_at IS NULL"
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def memory(r: Any) -> tuple[int, int]:
    """What Redis counts against maxmemory, and maxmemory."""
    info = await r.info("memory")
    return int(info["used_memory"]) - int(info["mem_not_counted_for_evict"]), int(info["maxmemory"])


async def caught_up(r: Any, deployment: Deployment) -> bool:
    """Every group read all the topic stream holds and acknowledged it, but for the entries the
    poison group holds pending (their dead letters refused)."""
    last = (await r.xinfo_stream(deployment.keys.events))["last-generated-id"]
    return all(
        g["last-delivered-id"] == last and (g["name"] == POISON_GROUP.encode() or not g["pending"])
        for g in await r.xinfo_groups(deployment.keys.events)
    )


async def sample(r: Any, deployment: Deployment, began: float, out: list[str]) -> None:
    """A line every second: Redis memory, the stream, the outbox, what the poison group holds."""
    while True:
        at = f"{time.monotonic() - began:5.1f}s"
        try:
            used, limit = await memory(r)
            pending = await r.xpending(deployment.keys.events, POISON_GROUP)
            out.append(
                f"{at} redis {used / MIB:6.2f} of {limit / MIB:6.2f} MiB, stream "
                f"{await r.xlen(deployment.keys.events)}, unpublished "
                f"{await unpublished(deployment)}, {POISON_GROUP} pending {pending['pending']}"
            )
        except (RedisError, OSError, TimeoutError, asyncpg.PostgresError) as exc:
            out.append(f"{at} {exc!r}")
        await asyncio.sleep(1)


def relay_full(answer: Answer) -> bool:
    return answer["overall"] == "COMPONENT_STATE_NOT_SERVING" and any(
        "maxmemory" in why for why in reasons(answer)
    )


def consumer_full(answer: Answer) -> bool:
    return answer["overall"] == "COMPONENT_STATE_DEGRADED" and any(
        "redis out of memory" in why and "dead letters cannot be written" in why
        for why in reasons(answer)
    )


def clear(answer: Answer) -> bool:
    return answer["overall"] == "COMPONENT_STATE_SERVING" and not reasons(answer)


@dataclass
class Scene:
    """The out-of-memory scenario's pieces, and its timeline."""

    deployment: Deployment
    pipeline: Pipeline
    workload: Workload
    r: Any
    request: pytest.FixtureRequest
    began: float = field(default_factory=time.monotonic)
    timeline: list[str] = field(default_factory=list)

    def mark(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.began:5.1f}s {what}")

    async def fill(self) -> None:
        """Once events flow: fill Redis with another user's key and leave ROOM below
        maxmemory; wait until both relays are unready, alive, and the outbox grows while the
        producers keep committing."""
        r, d, pipeline = self.r, self.deployment, self.pipeline

        async def flowing() -> bool:
            return int(await r.xlen(d.keys.events)) > 100

        await wait_until(flowing, timeout=30, what="events flowing")
        await r.setrange(FILLER, FILLER_BYTES - 1, b"x")  # a short command: no big buffer
        used, _ = await memory(r)
        await r.config_set("maxmemory", used + ROOM)
        self.mark(f"filled: maxmemory {(used + ROOM) / MIB:.2f} MiB, {used / MIB:.2f} used")

        async def relays_unready() -> bool:
            states = await asyncio.gather(*(pipeline.health(n) for n in RELAYS))
            return set(states) == {"NOT_SERVING"}

        await wait_until(relays_unready, timeout=30, interval=0.2, what="relays unready")
        for name in RELAYS:
            assert await pipeline.health(name, "conveyor.liveness") == "SERVING", "not dead"
        self.mark("relays NOT_SERVING (alive)")
        rows, committed = await unpublished(d), self.workload.journal.counts()["ok"]

        async def rows_stay() -> bool:
            return await unpublished(d) >= rows + 100

        await wait_until(rows_stay, timeout=20, interval=0.2, what="the outbox growing")
        assert self.workload.journal.counts()["ok"] >= committed + 20, "producers commit"
        self.mark(f"outbox grew from {rows} to {await unpublished(d)} unpublished")

    async def full(self) -> None:
        """`conveyor status` says why, and consumers read and acknowledge what Redis holds."""
        pipeline = self.pipeline
        *relays, consumer = await asyncio.gather(
            *(status_until(pipeline, n, relay_full, "NOT_SERVING, maxmemory") for n in RELAYS),
            status_until(pipeline, f"{POISON_GROUP}-0", consumer_full, "DEGRADED, full"),
        )
        self.mark("status: relays NOT_SERVING naming maxmemory, consumer DEGRADED")
        attach(self.request, "relay status while Redis is full", "\n".join(reasons(relays[0])))
        attach(self.request, "consumer status while Redis is full", "\n".join(reasons(consumer)))
        what = "consumers reading and acknowledging what Redis holds"
        await wait_until(lambda: caught_up(self.r, self.deployment), timeout=30, what=what)
        for name in pipeline.names("consume"):
            assert await pipeline.health(name) == "SERVING", f"{name}: ready, it reads"
        self.mark("consumers caught up with the stream, SERVING")

    async def free(self) -> Journal:
        """Delete the filler, restart nothing: every process SERVING, producers stopped after
        two seconds more, the pipeline settled, and the status asked before clear."""
        await self.r.delete(FILLER)
        self.mark("filler deleted: nothing restarted")
        await self.pipeline.wait_serving(timeout=40)
        self.mark("every process SERVING")
        await asyncio.sleep(2)  # producers and the whole pipeline flowing together again
        journal = await self.workload.stop()
        self.mark("producers stopped")
        self.pipeline.assert_alive()
        await settle(self.deployment, DEFAULT_GROUPS, timeout=60, diagnose=self.pipeline.tails)
        self.mark("settled")
        names = (*RELAYS, f"{POISON_GROUP}-0")
        await asyncio.gather(*(status_until(self.pipeline, n, clear, "clear") for n in names))
        self.mark("status: relays and consumer SERVING without a reason")
        return journal


@pytest.mark.timeout(200)
async def test_redis_out_of_memory_keeps_events_in_the_outbox_until_memory_is_freed(
    database_url: str,
    schema: str,
    key_prefix: str,
    noeviction_redis: RedisServer,
    seed: int,
    log_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    deployment = await deploy(database_url, noeviction_redis, schema, key_prefix)
    groups = DEFAULT_GROUPS
    config = WorkloadConfig(
        deployment.database_url, deployment.schema, seed=seed, rate=40.0, poison_share=0.05
    )
    env = {"CONVEYOR_TOKENS_FILE": str(tokens_file(tmp_path)), POISON_GROUP_ENV: POISON_GROUP}
    # Memory is freed when the test says: housekeeping's trims (from 60 s after a consumer's
    # start, within a slow run) would free some too, at a moment of their own.
    consume_args = (*CONSUME_ARGS, "--housekeeping-interval", "600s")
    r = redis_client.connect(noeviction_redis.url)
    samples: list[str] = []
    sampler: asyncio.Task[None] | None = None
    workload = Workload(config)
    try:
        pipeline = Pipeline(
            deployment, log_dir, relays=2, groups=groups, env=env, consume_args=consume_args
        )
        async with pipeline:
            scene = Scene(deployment, pipeline, workload, r, request)
            await pipeline.start()
            await pipeline.wait_serving(timeout=30)
            scene.mark("pipeline serving")
            workload.start()
            sampler = asyncio.create_task(sample(r, deployment, scene.began, samples))
            await scene.fill()
            await scene.full()
            journal = await scene.free()
            report = await check(deployment, groups, journal, seed=seed)
            attach(request, "torture report", report.table())
            codes = await asyncio.gather(*(pipeline.terminate(n) for n in pipeline.names()))
            refused = pipeline.grep("refuses the relay's XADDs")
            again = pipeline.grep("relay publishing again")
            held = pipeline.grep("dead letter refused")
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        await workload.stop()
        await r.aclose()
    scene.mark("stopped")
    attach(request, "timeline", "\n".join(scene.timeline))
    attach(request, "samples", "\n".join(samples))
    lines = [f"{n}: {line}" for found in (refused, held) for n, ls in found.items() for line in ls]
    attach(request, "refusals logged", "\n".join(lines))
    assert set(codes) == {0}, codes
    assert set(refused) == set(RELAYS), f"each relay says Redis refuses its XADDs: {refused}"
    assert all(" ERROR " in line for line in refused["relay-0"]), refused
    assert set(again) == set(RELAYS), f"each relay says it publishes again: {again}"
    assert journal.counts()["ok"] > 200, f"too little load to mean anything: {journal.counts()}"
    report.assert_clean()


@pytest.mark.timeout(200)
async def test_an_evicting_policy_is_reported_at_start_as_a_misconfiguration(
    database_url: str,
    schema: str,
    key_prefix: str,
    evicting_redis: RedisServer,
    seed: int,
    log_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    deployment = await deploy(database_url, evicting_redis, schema, key_prefix)
    groups = DEFAULT_GROUPS
    risk = eviction_risk("allkeys-lru", 64 * MIB)
    assert risk is not None and risk[0] == logging.ERROR
    warning = risk[1]
    workload = Workload(
        WorkloadConfig(deployment.database_url, deployment.schema, seed=seed, rate=60, total=150)
    )
    env = {"CONVEYOR_TOKENS_FILE": str(tokens_file(tmp_path))}
    began = time.monotonic()
    async with Pipeline(deployment, log_dir, relays=2, groups=groups, env=env) as pipeline:
        await pipeline.start()
        await pipeline.wait_serving(timeout=30)  # an evicting policy does not make it unready
        names = pipeline.names()
        answers = await asyncio.gather(*(status(pipeline, n) for n in names))
        for name, answer in zip(names, answers, strict=True):
            assert answer["overall"] == "COMPONENT_STATE_DEGRADED", (name, answer)
            for component in answer["components"]:
                assert component["state"] == "COMPONENT_STATE_DEGRADED", (name, component)
                assert warning in component["reasons"], (name, component)
        attach(request, "status reasons", "\n".join(reasons(answers[0])))
        workload.start()
        journal = await workload.wait(timeout=60)
        await settle(deployment, groups, timeout=60, diagnose=pipeline.tails)
        report = await check(deployment, groups, journal, seed=seed)
        attach(request, "torture report", report.table())
        codes = await asyncio.gather(*(pipeline.terminate(n) for n in names))
        logs = {n: (log_dir / f"{n}.log").read_text(errors="replace").splitlines() for n in names}
    attach(request, "timing", f"{time.monotonic() - began:.1f}s from the first process start")
    for name, lines in logs.items():
        kind = "relay" if name.startswith("relay") else "consumer"
        started = next(i for i, line in enumerate(lines) if f"{kind} started" in line)
        said = [i for i, line in enumerate(lines) if warning in line]
        assert len(said) == 1, f"{name} says it once, at start:\n" + "\n".join(lines)
        assert said[0] < started and " ERROR " in lines[said[0]], lines[said[0]]
    assert set(codes) == {0}, codes
    assert journal.counts()["ok"] > 100, journal.counts()
    report.assert_clean()
