"""A poison storm: a tenth of the events fail for good in one exactly-once group and nowhere
else. The other groups apply everything, in order, with no lag; the poisoned group's dead letters
are exactly the poison events of committed transactions, in the catalog and in `conveyor dlq
list`; after the fix, `conveyor dlq reprocess` brings each back to that group alone, which then
has applied every event once.

The router raises `Reject` for a poison event in the poisoned group (tests/torture/router.py), so
each becomes a dead letter at its first attempt, whatever `--max-attempts` says: the test checks
that every one took a single attempt rather than setting a fast retry policy.

Order: one relay feeds the stream and each group has one member that never crashes, so the
unaffected groups are declared ordered (docs/architecture.md, "Ordering"). The poisoned group is
not: its reprocessed events apply after the events that followed them, which the docs allow. One
producer writes, so that outbox id order is each aggregate's commit order: with several, two
transactions of one aggregate may commit in the opposite order of their ids, and the relay then
rightly publishes the higher id first, which the checker's outbox-id rule would count as out of
order."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.processes import run_conveyor, wait_until
from tests.torture.checker import check, settle
from tests.torture.conftest import attach
from tests.torture.deployment import Deployment, Group
from tests.torture.pipeline import Pipeline
from tests.torture.report import Report
from tests.torture.router import POISON_FIX_ENV, POISON_GROUP_ENV
from tests.torture.workload import Journal, Workload, WorkloadConfig

pytestmark = pytest.mark.slow

POISONED = "eo-a"
UNAFFECTED = ("eo-b", "alo-c")
PRODUCE_FOR = 12.0
"""Seconds the producer runs (about 60 transactions a second, two events each)."""


@dataclass(frozen=True)
class Operator:
    """The `conveyor` CLI pointed at one process with a token, as an operator runs it."""

    target: str
    token: str

    async def run(self, *args: str) -> Any:
        """`conveyor ARGS --json`, which must exit 0; its parsed output."""
        env = {"CONVEYOR_TARGET": self.target, "CONVEYOR_ADMIN_TOKEN": self.token}
        done = await asyncio.to_thread(run_conveyor, [*args, "--json"], env, 60)
        assert done.returncode == 0, f"conveyor {' '.join(args)} exited {done.returncode}:\n{done}"
        return json.loads(done.stdout)

    async def lag(self, topic: str) -> dict[str, tuple[int, int]]:
        """Group -> (lag in entries, pending) of `topic`, as `conveyor status` shows them."""
        status = await self.run("status")
        return {
            g["group"]: (int(g.get("lag_entries", 0)), int(g.get("pending", 0)))
            for g in status.get("groups", [])
            if g.get("topic") == topic
        }


def write_token(tokens_file: Path) -> str:
    """`conveyor token create` of a write token into `tokens_file`; the token."""
    args = ["token", "create", "--principal", "oncall", "--scope", "write"]
    done = run_conveyor([*args, "--tokens-file", str(tokens_file)])
    assert done.returncode == 0, done.stderr
    prefix = "export CONVEYOR_ADMIN_TOKEN="
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith(prefix)]
    return line.removeprefix(prefix).strip("'\"")


async def catalog_letters(deployment: Deployment) -> list[asyncpg.Record]:
    """The deployment's dead letters of its topic, from conveyor.dead_letters."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT consumer_group, event_id, state, reason, attempts, source_stream "
                "FROM conveyor.dead_letters WHERE key_prefix = $1 AND topic = $2",
                deployment.key_prefix,
                deployment.topic,
            )
        )
    finally:
        await conn.close()


async def streams_applied_from(deployment: Deployment, events: set[uuid.UUID]) -> dict[str, int]:
    """Stream -> effects of `events` in the poisoned group applied from it."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        rows = await conn.fetch(
            f"SELECT stream, count(*) FROM {deployment.schema}.effects "
            "WHERE consumer_group = $1 AND event_id = ANY($2::uuid[]) GROUP BY stream",
            POISONED,
            list(events),
        )
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


async def assert_storm(
    deployment: Deployment, report: Report, journal: Journal, operator: Operator
) -> None:
    """The other groups applied everything with no lag; the poisoned group everything but the
    poison, each of which is an open dead letter of it (catalog and `conveyor dlq list`)."""
    committed = {e.event_id for _, e in journal.events("ok")}
    poison = poison_of(journal)
    counts = {g.group: g for g in report.groups}
    for name in UNAFFECTED:
        assert (counts[name].applied, counts[name].effects) == (len(committed),) * 2, name
        assert counts[name].dead_lettered == 0, name
    assert counts[POISONED].applied == len(committed) - len(poison)
    assert counts[POISONED].dead_lettered == len(poison)

    async def no_lag() -> bool:  # settle saw it in Redis; the status snapshot is 1 s behind
        return await operator.lag(deployment.topic) == {
            name: (0, 0) for name in (POISONED, *UNAFFECTED)
        }

    await wait_until(no_lag, timeout=30, interval=1.0, what="conveyor status: no lag")
    letters = await catalog_letters(deployment)
    assert {r["event_id"] for r in letters} == poison, "dead letters are the poison exactly"
    assert len(letters) == len(poison), "one dead letter per poison event"
    assert {(r["consumer_group"], r["state"], r["reason"], r["attempts"]) for r in letters} == {
        (POISONED, "open", "rejected", 1)
    }
    assert {r["source_stream"] for r in letters} == {deployment.keys.events}
    topic = deployment.topic
    listed = await operator.run(
        "dlq", "list", "--stream", topic, "--group", POISONED, "--state", "open", "--all"
    )
    shown = [uuid.UUID(d["event_id"]) for d in listed["dead_letters"]]
    assert set(shown) == poison and len(shown) == len(poison), "conveyor dlq list"
    everything = await operator.run("dlq", "list", "--stream", topic, "--all", "--count", "1000")
    assert {d["group"] for d in everything["dead_letters"]} == {POISONED}


def poison_of(journal: Journal) -> set[uuid.UUID]:
    """Poison events of committed transactions (call after `journal.resolve`)."""
    return {e.event_id for _, e in journal.events("ok") if e.poison}


@pytest.mark.timeout(240)
async def test_poison_events_dead_letter_in_one_group_only_and_apply_once_after_the_fix(
    deployment: Deployment, seed: int, log_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    began = time.monotonic()
    fix = tmp_path / "poison-fixed"
    tokens = tmp_path / "tokens.txt"
    token = await asyncio.to_thread(write_token, tokens)
    groups = (
        Group(POISONED, args=("--tokens-file", str(tokens))),
        Group("eo-b"),
        Group("alo-c", exactly_once=False),
    )
    config = WorkloadConfig(
        deployment.database_url,
        deployment.schema,
        seed=seed,
        producers=1,
        rate=60.0,
        poison_share=0.1,
    )
    workload = Workload(config)
    env = {POISON_GROUP_ENV: POISONED, POISON_FIX_ENV: str(fix)}  # every process knows the rule
    async with Pipeline(deployment, log_dir, relays=1, groups=groups, env=env) as pipeline:
        await pipeline.start()
        operator = Operator(pipeline.grpc_address(f"{POISONED}-0") or "", token)
        workload.start()
        try:
            await asyncio.sleep(PRODUCE_FOR)
        finally:
            journal = await workload.stop()
        pipeline.assert_alive()
        await settle(deployment, groups, timeout=60, diagnose=pipeline.tails)
        before = await check(deployment, groups, journal, seed=seed, ordered=UNAFFECTED)
        attach(request, "torture report before the fix", before.table())
        before.assert_clean()
        await assert_storm(deployment, before, journal, operator)
        poison = poison_of(journal)

        fix.touch()  # the fix, then every open dead letter of the group back to it
        answer = await operator.run(
            "dlq", "reprocess", "--stream", deployment.topic, "--group", POISONED, "--state",
            "open", "--idempotency-key", f"poison-fix-{seed}", "--yes",
        )  # fmt: skip
        attach(request, "conveyor dlq reprocess", json.dumps(answer))
        assert int(answer.get("requeued", 0)) == len(poison), answer
        await settle(deployment, groups, timeout=60, diagnose=pipeline.tails)

        async def all_reprocessed() -> bool:
            return {r["state"] for r in await catalog_letters(deployment)} == {"reprocessed"}

        await wait_until(all_reprocessed, timeout=30, interval=0.5, what="dead letters settled")
        after = await check(deployment, groups, journal, seed=seed, ordered=UNAFFECTED)
        attach(request, "torture report after the reprocess", after.table())
        retried = await streams_applied_from(deployment, poison)
        codes = await asyncio.gather(*(pipeline.terminate(n) for n in pipeline.names()))
    committed = sum(1 for _ in journal.events("ok"))
    attach(
        request,
        "figures",
        f"{committed} events committed, {len(poison)} poison ({len(poison) / committed:.1%}); "
        f"{time.monotonic() - began:.1f}s from the first process start",
    )
    after.assert_clean()
    for g in after.groups:  # every group applied every event once, nothing is dead any more
        assert (g.applied, g.effects, g.dead_lettered) == (committed, committed, 0), g
    assert retried == {deployment.keys.retry(POISONED): len(poison)}, "from its retry stream"
    assert set(codes) == {0}, codes
    assert committed > 500, f"too little load to mean anything: {journal.counts()}"
    assert 0.05 < len(poison) / committed < 0.15, (len(poison), committed)
