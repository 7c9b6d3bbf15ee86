"""An operator's flow against real processes: a dead letter listed, reprocessed (twice, by
mistake) and applied once, through the `conveyor` CLI and a running `conveyor consume`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.test_ops_plane import READ_TOKEN, WRITE_TOKEN, port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow


async def test_dead_letter_reprocessed_to_its_group_applies_once(
    case: Case, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"reader read {hashlib.sha256(READ_TOKEN.encode()).hexdigest()}\n"
        f"writer write {hashlib.sha256(WRITE_TOKEN.encode()).hexdigest()}\n"
    )
    refuse = tmp_path / "refuse"
    refuse.touch()
    await create_effects(case.pg, case.schema)
    env = case.env | {"TEST_EFFECTS_SCHEMA": case.schema, "TEST_REJECT_FILE": str(refuse)}
    args = [
        "consume",
        "--group",
        "g",
        "--router",
        "tests.integration.effects_router:router",
        "--ledger-schema",
        case.schema,
        "--grpc-addr",
        "127.0.0.1:0",
        "--tokens-file",
        str(tokens),
    ]
    proc = start_conveyor(args, env)
    port = port_of(proc, [])
    try:
        ids = await publish(case.redis, case.prefix, 10, aggregates=10)

        async def nine() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 9

        await wait_until(nine, what="nine applied, agg0 rejected")
        client = {"CONVEYOR_TARGET": f"127.0.0.1:{port}", "CONVEYOR_ADMIN_TOKEN": WRITE_TOKEN}
        listed = run_conveyor(["dlq", "list", "--stream", "identity.dlq", "--json"], client)
        assert listed.returncode == 0, listed.stderr
        (dead,) = [d for d in json.loads(listed.stdout)["dead_letters"] if d["event_id"] == ids[0]]
        assert dead["reason"] == "DEAD_LETTER_REASON_REJECTED"
        shown = run_conveyor(
            ["dlq", "inspect", "--stream", "identity.dlq", "--id", dead["entry_id"], "--json"],
            client,
        )
        assert shown.returncode == 0, shown.stderr
        inspected = json.loads(shown.stdout)
        assert json.loads(inspected["payload_json"])["user_id"] == "u0"
        assert "Reject: agg0 is refused for now" in inspected["traceback"]

        read_only = client | {"CONVEYOR_ADMIN_TOKEN": READ_TOKEN}
        denied = run_conveyor(
            ["dlq", "resolve", "--stream", "identity", "--id", dead["entry_id"], "--reason", "x"],
            read_only,
        )
        assert denied.returncode == 5, denied.stderr

        refuse.unlink()  # the cause is fixed
        again = [
            "dlq",
            "reprocess",
            "--stream",
            "identity.dlq",
            "--id",
            dead["entry_id"],
            "--idempotency-key",
            f"fix-{case.prefix}",
            "--json",
        ]
        first = run_conveyor(again, client)
        second = run_conveyor(again, client)  # a double click
        assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
        assert json.loads(first.stdout) | {"replayed": True} == json.loads(second.stdout)
        assert int(json.loads(first.stdout)["requeued"]) == 1

        async def ten() -> bool:
            return len(await effect_counts(case.pg, case.schema, "g")) == 10

        await wait_until(ten, what="the dead letter applied")

        async def reprocessed() -> bool:
            state = await case.pg.fetchval(
                "SELECT state FROM conveyor.dead_letters WHERE dlq_stream = $1 "
                "AND dlq_entry_id = $2",
                wire.Keys("identity", case.prefix).dlq,
                dead["entry_id"],
            )
            return state == "reprocessed"

        await wait_until(reprocessed, what="the catalog to say reprocessed")
    finally:
        stop(proc)
    assert set((await effect_counts(case.pg, case.schema, "g")).values()) == {1}
    retry = wire.Keys("identity", case.prefix).retry("g")
    assert await case.redis.xlen(retry) == 0, "requeued once, applied, acknowledged and deleted"
    audited = await case.pg.fetch(
        "SELECT principal, action, outcome FROM conveyor.audit WHERE $1 = ANY(target_ids)",
        dead["entry_id"],
    )
    assert ("writer", "reprocess") in {(r["principal"], r["action"]) for r in audited}
