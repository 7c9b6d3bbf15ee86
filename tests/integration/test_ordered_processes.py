"""Ordered partitions across real `conveyor consume` processes: a member paused (SIGSTOP) past
its lease loses its partitions to the other, which applies them in order; woken up, the paused
one commits nothing it no longer owns and gets its share back."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

import pytest

from tests.integration.ordered_support import (
    TOPIC,
    applied,
    create_applied,
    leases,
    make_ordered,
    per_aggregate,
    publish,
    wait_for,
)
from tests.processes import start_conveyor, stop

pytestmark = [pytest.mark.usefixtures("catalog_cleanup"), pytest.mark.slow]
GROUP = "orders-app"


def _start(case: Any, name: str) -> subprocess.Popen[str]:
    env = {
        **case.env,
        "TEST_APPLIED_SCHEMA": case.schema,
        "TEST_MEMBER": name,
    }
    args = [
        "consume",
        "--group",
        GROUP,
        "--router",
        "tests.integration.ordered_process_router:router",
        "--topic",
        TOPIC,
        "--consumer",
        name,
        "--ledger-schema",
        case.schema,
        "--lease-ttl",
        "3s",
        "--retry-backoff",
        "0.2s",
    ]
    return start_conveyor(args, env)


async def _split(case: Any, owners: list[str]) -> bool:
    held = await leases(case.pg, case.prefix, GROUP)
    return sorted(held.get(p) or "" for p in range(4)) == owners


async def _count(case: Any, n: int) -> bool:
    rows = await applied(case.pg, case.schema)
    assert len(rows) <= n, f"{len(rows)} effects, more than the {n} expected"
    return len(rows) == n


def _events(start: int) -> list[tuple[str, int]]:
    return [(f"a{a}", s) for s in range(start, start + 3) for a in range(12)]


async def test_a_member_paused_past_its_lease_loses_its_partitions_in_order(case: Any) -> None:
    await make_ordered(case.pg, case.prefix, 4)
    await create_applied(case.pg, case.schema)
    a = _start(case, "m-a")
    b = _start(case, "m-b")
    out: dict[str, str] = {}
    try:
        await wait_for(lambda: _split(case, ["m-a", "m-a", "m-b", "m-b"]), "a 2/2 split")
        await publish(case.redis, case.prefix, 4, _events(1))
        await wait_for(lambda: _count(case, 36), "the first events applied")

        os.kill(a.pid, signal.SIGSTOP)
        await publish(case.redis, case.prefix, 4, _events(4))
        await wait_for(lambda: _split(case, ["m-b"] * 4), "m-b taking m-a's partitions")
        await wait_for(lambda: _count(case, 72), "the events after the pause applied")

        os.kill(a.pid, signal.SIGCONT)
        await wait_for(lambda: _split(case, ["m-a", "m-a", "m-b", "m-b"]), "m-a back")
        await publish(case.redis, case.prefix, 4, _events(7))
        await wait_for(lambda: _count(case, 108), "the last events applied")
    finally:
        os.kill(a.pid, signal.SIGCONT)
        out["m-a"] = stop(a)
        out["m-b"] = stop(b)
    rows = await applied(case.pg, case.schema)
    assert per_aggregate(rows) == {f"a{x}": list(range(1, 10)) for x in range(12)}
    # Published while m-a was paused: all applied by m-b, once (the counts above), in order.
    assert {m for _, s, m in rows if 4 <= s <= 6} == {"m-b"}
    assert "lost lease" in out["m-a"], out["m-a"][-3000:]
