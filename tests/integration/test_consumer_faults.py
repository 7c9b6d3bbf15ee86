"""Crashes, stalls and stops of consumer processes never apply an effect twice (guarantee 3)."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from consumers.applier import Applier
from consumers.deliveries import Decoder
from consumers.streams import TopicStreams
from conveyor import wire
from conveyor.replies import text
from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    create_effects,
    effect_counts,
    effect_router,
    publish,
)
from tests.processes import start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow


def consume_args(case: Case, *extra: str) -> list[str]:
    return [
        "consume",
        "--group",
        "g",
        "--router",
        "tests.integration.effects_router:router",
        "--ledger-schema",
        case.schema,
        "--claim-idle",
        "1s",
        *extra,
    ]


def consume_env(case: Case, sleep: float = 0.0) -> dict[str, str]:
    return case.env | {"TEST_EFFECTS_SCHEMA": case.schema, "TEST_HANDLER_SLEEP": str(sleep)}


async def applied(case: Case, ids: list[str]) -> bool:
    return len(await effect_counts(case.pg, case.schema, "g")) == len(ids)


async def some_applied(case: Case) -> bool:
    return bool(await effect_counts(case.pg, case.schema, "g"))


async def pending(case: Case) -> int:
    info = await case.redis.xpending(wire.Keys("identity", case.prefix).events, "g")
    return int(info["pending"])


async def assert_exactly_once(case: Case, ids: list[str]) -> None:
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(ids), "every event applied"
    doubled = {k: v for k, v in counts.items() if v != 1}
    assert not doubled, f"applied more than once: {doubled}"


async def test_committed_but_unacknowledged_batch_is_acknowledged_not_reapplied(case: Case) -> None:
    """The state a SIGKILL between COMMIT and XACK leaves: the effects are in, the entries
    pending on a consumer that is gone. Another consumer reclaims them and must not re-apply."""
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 300)
    router = effect_router(case.schema)
    streams = TopicStreams(case.redis, wire.Keys("identity", case.prefix), "g", "dead-consumer")
    await streams.ensure_groups()
    entries = await streams.read(streams.keys.events, 300, None)
    decoder = Decoder(topic="identity", group="g", router=router, max_bytes=1 << 20)
    deliveries = [decoder.decode(e) for e in entries]
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    applier = Applier(pool, group="g", ledger_schema=case.schema, exactly_once=True, partitions=2)
    await applier.apply(deliveries)  # type: ignore[arg-type]  # committed; then the "crash"
    await applier.close()
    await pool.close()
    assert await pending(case) == 300

    proc = start_conveyor(consume_args(case), consume_env(case))
    try:

        async def drained() -> bool:
            return await pending(case) == 0

        await wait_until(drained, timeout=30, what="reclaimed entries acknowledged")
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    await assert_exactly_once(case, ids)
    assert "reclaimed entries" in out


@pytest.mark.parametrize("kill_after", [0.0, 0.05, 0.2])
async def test_consumer_killed_mid_handler_applies_once_after_reclaim(
    case: Case, kill_after: float
) -> None:
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 400)
    slow = start_conveyor(consume_args(case, "--batch-size", "50"), consume_env(case, sleep=0.002))
    await wait_until(lambda: some_applied(case), timeout=30, what="a first batch committed")
    await asyncio.sleep(kill_after)
    stop(slow, signal.SIGKILL)
    assert not await applied(case, ids), "killed before the end"
    proc = start_conveyor(consume_args(case), consume_env(case))
    try:
        await wait_until(lambda: applied(case, ids), timeout=60, what="all applied after reclaim")
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    await assert_exactly_once(case, ids)


async def test_consumer_paused_past_idle_then_resumed_applies_once(case: Case) -> None:
    await create_effects(case.pg, case.schema)
    ids = await publish(case.redis, case.prefix, 200)
    paused = start_conveyor(
        consume_args(case, "--batch-size", "100"), consume_env(case, sleep=0.01)
    )
    await wait_until(lambda: some_applied(case), timeout=30, what="a first batch committed")
    paused.send_signal(signal.SIGSTOP)  # mid-batch: its transaction holds uncommitted ledger rows
    other = start_conveyor(consume_args(case), consume_env(case))
    try:
        # Past claim_idle `other` reclaims the paused batch and blocks on its ledger rows; only
        # then is the paused one resumed (a loaded machine can take seconds to start `other`).
        async def reclaimed() -> bool:
            info = await case.redis.xpending(wire.Keys("identity", case.prefix).events, "g")
            owners = {text(c["name"]): int(c["pending"]) for c in info["consumers"]}
            return any(n.endswith(f"-{other.pid}") and k for n, k in owners.items())

        await wait_until(reclaimed, timeout=60, what="the second consumer reclaimed the batch")
        paused.send_signal(signal.SIGCONT)
        await wait_until(lambda: applied(case, ids), timeout=60, what="all applied")

        async def drained() -> bool:
            return await pending(case) == 0

        await wait_until(drained, timeout=30, what="pending list drained")
    finally:
        if paused.poll() is None:
            paused.send_signal(signal.SIGCONT)
        outs = [stop(paused), stop(other)]
    assert [paused.returncode, other.returncode] == [0, 0], outs
    assert "reclaimed entries" in outs[1], "the second consumer took over the paused one's work"
    await assert_exactly_once(case, ids)


async def test_graceful_stop_under_load_loses_nothing_and_applies_nothing_twice(
    case: Case,
) -> None:
    await create_effects(case.pg, case.schema)
    first = start_conveyor(consume_args(case, "--batch-size", "100"), consume_env(case))
    ids = await publish(case.redis, case.prefix, 3000)
    await wait_until(lambda: some_applied(case), timeout=30, what="consuming under way")
    out = stop(first, signal.SIGTERM)
    assert first.returncode == 0, out
    assert "consumer stopped after the batch in flight" in out
    assert await pending(case) == 0, "what it read, it finished and acknowledged"
    ids += await publish(case.redis, case.prefix, 1000)
    second = start_conveyor(consume_args(case), consume_env(case))
    try:
        await wait_until(lambda: applied(case, ids), timeout=60, what="the rest applied")
    finally:
        stop(second)
    await assert_exactly_once(case, ids)
