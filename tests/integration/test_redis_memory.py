"""Redis out of memory, and Redis configured to evict: real `conveyor relay` and `conveyor
consume` processes against throwaway Redis servers (never the shared one: these tests change
its maxmemory and policy with CONFIG SET).

At maxmemory with `noeviction`, Redis refuses every command that adds data: the relay's XADDs
(its events stay in the outbox, its readiness fails, and they go out once memory is freed) and a
consumer's dead letters (the entry stays pending and its dead letter is written once memory is
freed; reads and acknowledgements go on). A policy that can evict streams is reported at start.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from conveyor import redis_client, wire
from conveyor.outages import OUTAGE_LOG_INTERVAL
from conveyor.v1 import admin_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.relay_support import drained, fill, stream_ids, unpublished
from tests.integration.test_ops_plane import admin, check, port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until
from tests.servers import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAXMEMORY = "2mb"
FILLER = "filler"


@pytest.fixture
def tight_redis() -> Iterator[RedisServer]:
    """A throwaway Redis with a small maxmemory and the policy Conveyor wants: noeviction."""
    with RedisServer(config=("--maxmemory", MAXMEMORY, "--maxmemory-policy", "noeviction")) as s:
        yield s


@pytest.fixture
async def tight(tight_redis: RedisServer) -> AsyncIterator[Any]:
    """A client of `tight_redis`."""
    client = redis_client.connect(tight_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def fill_past_maxmemory(r: Any) -> None:
    """Push used memory well past maxmemory with one key (written while the limit is lifted):
    from here on Redis refuses every command that adds data."""
    await r.config_set("maxmemory", "0")
    await r.set(FILLER, b"x" * 3_000_000)
    await r.config_set("maxmemory", MAXMEMORY)
    info = await r.info("memory")
    assert info["used_memory"] - info["mem_not_counted_for_evict"] > info["maxmemory"]


def env_of(case: Case, server: RedisServer, **extra: str) -> dict[str, str]:
    return case.env | {"CONVEYOR_REDIS_URL": server.url, **extra}


def status(port: int) -> admin_pb2.GetStatusResponse:
    ch, stub, _ = admin(port, None)
    with ch:
        return stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)


def reasons(port: int) -> str:
    """Every reason of every component, as one text."""
    return "; ".join(r for c in status(port).components for r in c.reasons)


async def health_is(port: int, want: int, service: str = "") -> bool:
    return await asyncio.to_thread(check, port, service) == want


async def test_a_relay_keeps_events_in_the_outbox_while_redis_has_no_memory(
    case: Case, tight_redis: RedisServer, tight: Any
) -> None:
    args = ["relay", "--grpc-addr", "127.0.0.1:0", "--allow-unauthenticated"]
    proc = start_conveyor(args, env_of(case, tight_redis))
    out: list[str] = []
    try:
        port = port_of(proc, out)
        before = await fill(case.pg, case.schema, 10)
        await wait_until(lambda: drained(case.pg, case.schema), timeout=20, what="published")
        await wait_until(lambda: health_is(port, SERVING), timeout=20, what="ready")

        await fill_past_maxmemory(tight)
        filled = time.monotonic()
        during = await fill(case.pg, case.schema, 50)
        await wait_until(lambda: health_is(port, NOT_SERVING), timeout=20, what="unready")
        component = f"conveyor.relay.{case.schema}"
        assert await health_is(port, NOT_SERVING, component)
        assert await health_is(port, SERVING, "conveyor.liveness"), "unready, not dead"

        async def refused() -> bool:
            return "XaddRejected" in await asyncio.to_thread(reasons, port)

        await wait_until(refused, timeout=20, what="the refused batch in the status")
        why = await asyncio.to_thread(reasons, port)
        assert "redis out of memory" in why and "maxmemory" in why and "(OOM)" in why, why
        assert await unpublished(case.pg, case.schema) == 50, "every event kept in the outbox"
        cli = {"CONVEYOR_TARGET": f"127.0.0.1:{port}"}
        shown = run_conveyor(["status", "--json"], cli)
        assert shown.returncode == 0, shown.stderr
        answer = json.loads(shown.stdout)
        assert answer["overall"] == "COMPONENT_STATE_NOT_SERVING"
        used, limit = (int(answer["redis"][k]) for k in ("used_memory_bytes", "maxmemory_bytes"))
        assert used > limit == 2 * 1024 * 1024

        await tight.delete(FILLER)  # memory freed: nothing restarted
        lines_allowed = 1 + int((time.monotonic() - filled) // OUTAGE_LOG_INTERVAL)
        await wait_until(lambda: drained(case.pg, case.schema), timeout=25, what="published")
        await wait_until(lambda: health_is(port, SERVING), timeout=20, what="ready again")
        assert not await asyncio.to_thread(reasons, port)
        published = await stream_ids(tight, case.prefix)
    finally:
        out.append(stop(proc))
    assert sorted(published) == sorted(before + during), "every event once"
    log = "".join(out)
    refusals = [line for line in log.splitlines() if "redis is out of memory" in line]
    assert 1 <= len(refusals) <= lines_allowed, "not one line per retry:\n" + log
    assert " ERROR " in refusals[0] and "raise maxmemory" in refusals[0], refusals
    assert "--max-stream-length" in refusals[0], refusals
    assert "relay publishing again" in log, log


async def test_a_dead_letter_redis_has_no_memory_for_waits_pending_and_is_written_later(
    case: Case, tight_redis: RedisServer, tight: Any, tmp_path: Path
) -> None:
    """The consumer starts on a full Redis (a group that exists needs no memory), applies and
    acknowledges what it can, and holds the event whose dead letter Redis refuses."""
    keys = wire.Keys("identity", case.prefix)
    refuse = tmp_path / "refuse"
    refuse.touch()  # agg0's event is rejected: a dead letter
    ids = await ten_events_for_group_g(case, tight)
    await fill_past_maxmemory(tight)
    filled = time.monotonic()
    args = ["consume", "--group", "g", "--router", "tests.integration.effects_router:router"]
    args += ["--ledger-schema", case.schema, "--grpc-addr", "127.0.0.1:0"]
    env = env_of(case, tight_redis, TEST_EFFECTS_SCHEMA=case.schema, TEST_REJECT_FILE=str(refuse))
    proc = start_conveyor([*args, "--allow-unauthenticated"], env)
    out: list[str] = []
    try:
        port = port_of(proc, out)

        async def nine_applied() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 9

        await wait_until(nine_applied, timeout=20, what="the other nine applied")

        async def one_pending() -> bool:
            return int((await tight.xpending(keys.events, "g"))["pending"]) == 1

        await wait_until(one_pending, timeout=20, what="the nine acknowledged")
        (held,) = await tight.xpending_range(keys.events, "g", "-", "+", 10)
        ((first, _),) = await tight.xrange(keys.events, count=1)
        assert held["message_id"] == first, "the rejected event (agg0's, the first) is held"

        async def degraded() -> bool:
            return "redis out of memory" in await asyncio.to_thread(reasons, port)

        await wait_until(degraded, timeout=20, what="the reason in the status")
        # Reading and acknowledging: still ready, and DEGRADED with the reason.
        await wait_until(lambda: health_is(port, SERVING), timeout=20, what="ready")
        answer = await asyncio.to_thread(status, port)
        assert answer.overall == admin_pb2.COMPONENT_STATE_DEGRADED, answer
        assert "dead letters cannot be written" in await asyncio.to_thread(reasons, port)
        await asyncio.sleep(1)  # a few rounds more: still held, not moved
        assert not await tight.exists(keys.dlq)

        await tight.delete(FILLER)
        lines_allowed = 1 + int((time.monotonic() - filled) // OUTAGE_LOG_INTERVAL)

        async def dead_lettered() -> bool:
            return bool(await tight.exists(keys.dlq)) and await tight.xlen(keys.dlq) == 1

        await wait_until(dead_lettered, timeout=20, what="the dead letter written")
        await wait_until(lambda: _none_pending(tight, keys.events), timeout=20, what="acked")
        await wait_until(
            lambda: _no_reason(port), timeout=20, what="the reason gone from the status"
        )
    finally:
        out.append(stop(proc))
    ((_, fields),) = await tight.xrange(keys.dlq)
    assert fields[wire.F_EVENT_ID].decode() == ids[0]
    assert fields[wire.DL_REASON] == b"rejected", "the reason it had, not a redelivery's"
    assert fields[wire.DL_ATTEMPTS] == b"1", "held, not redelivered"
    assert set((await effect_counts(case.pg, case.schema, "g")).values()) == {1}
    log = "".join(out)
    assert "out of memory and refuses writes" in log, "the start says Redis is full:\n" + log
    refusals = [line for line in log.splitlines() if "dead letter refused" in line]
    assert 1 <= len(refusals) <= lines_allowed and " ERROR " in refusals[0], log
    assert "raise maxmemory" in refusals[0], refusals


async def ten_events_for_group_g(case: Case, r: Any) -> list[str]:
    """Group g on the topic's streams, as a consumer that ran before left it, then ten events
    in the stream (one per aggregate, agg0's first) and the effects table; their ids."""
    keys = wire.Keys("identity", case.prefix)
    for key in (keys.events, keys.retry("g")):
        await r.xgroup_create(key, "g", id="0", mkstream=True)
    await create_effects(case.pg, case.schema)
    return await publish(r, case.prefix, 10, aggregates=10)


async def _none_pending(r: Any, stream: str) -> bool:
    return int((await r.xpending(stream, "g"))["pending"]) == 0


async def _no_reason(port: int) -> bool:
    return not await asyncio.to_thread(reasons, port)


@pytest.fixture
def evicting_redis() -> Iterator[RedisServer]:
    """A throwaway Redis configured as a cache: it evicts any key when memory runs out."""
    with RedisServer(config=("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru")) as s:
        yield s


@pytest.mark.parametrize("role", ["relay", "consumer"])
async def test_a_policy_that_can_evict_streams_is_reported_at_start(
    case: Case, evicting_redis: RedisServer, role: str
) -> None:
    await create_effects(case.pg, case.schema)
    args = ["relay"]
    if role == "consumer":
        args = ["consume", "--group", "g", "--router", "tests.integration.effects_router:router"]
        args += ["--ledger-schema", case.schema]
    env = env_of(case, evicting_redis, TEST_EFFECTS_SCHEMA=case.schema)
    proc = start_conveyor([*args, "--grpc-addr", "127.0.0.1:0", "--allow-unauthenticated"], env)
    out: list[str] = []
    r = redis_client.connect(evicting_redis.url)
    try:
        port = port_of(proc, out)
        await wait_until(lambda: health_is(port, SERVING), timeout=20, what="ready: not refused")

        async def misconfigured() -> bool:
            return "allkeys-lru" in await asyncio.to_thread(reasons, port)

        await wait_until(misconfigured, timeout=20, what="the reason in the status")
        answer = await asyncio.to_thread(status, port)
        assert answer.overall == admin_pb2.COMPONENT_STATE_DEGRADED, "working, but look"
        why = await asyncio.to_thread(reasons, port)
        assert "misconfigured" in why and "can lose streams" in why, why
        assert "set maxmemory-policy noeviction" in why, "what to do"
        shown = run_conveyor(["status"], {"CONVEYOR_TARGET": f"127.0.0.1:{port}"})
        assert "allkeys-lru" in shown.stdout and "DEGRADED" in shown.stdout, shown.stdout

        # A policy evicting only keys with a TTL cannot evict Conveyor's: a warning, no reason.
        await r.config_set("maxmemory-policy", "volatile-lru")
        await wait_until(lambda: _no_reason(port), timeout=20, what="the reason gone")
    finally:
        await r.aclose()
        out.append(stop(proc))
    lines = "".join(out).splitlines()
    started = next(i for i, line in enumerate(lines) if f"{role} started" in line)
    (error,) = [i for i, line in enumerate(lines) if "redis misconfigured" in line]
    assert error < started and " ERROR " in lines[error], lines
    assert "maxmemory-policy allkeys-lru" in lines[error], lines[error]
    assert "can lose streams" in lines[error], lines[error]
    (warning,) = [line for line in lines if "maxmemory-policy volatile-lru" in line]
    assert " WARNING " in warning and "Conveyor sets none" in warning, warning
