"""A reprocess repeated with its idempotency key, against a real `conveyor consume`: the first
answer comes back (marked replayed) whatever happened to the dead letter since, and an answer
stored without skip reasons says they were not recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.test_cli_messages import fixture_consumer  # noqa: F401 - fixture
from tests.processes import run_conveyor, wait_until

pytestmark = pytest.mark.slow

_REPLAYED = "this one requeued nothing"


@pytest.fixture(name="keys")
async def fixture_keys(case: Case, catalog_cleanup: None) -> AsyncIterator[str]:
    """The prefix of the test's idempotency keys; their stored requests are deleted after."""
    yield f"k-{case.prefix}"
    await case.pg.execute(
        "DELETE FROM conveyor.reprocess_requests WHERE starts_with(idempotency_key, $1)",
        f"k-{case.prefix}",
    )


async def _dead_letter(case: Case, client: dict[str, str]) -> str:
    """The entry id of the one dead letter of group g (aggregate agg0, rejected)."""
    await create_effects(case.pg, case.schema)
    await publish(case.redis, case.prefix, 3, aggregates=3)

    async def two() -> bool:
        return len(await effect_counts(case.pg, case.schema, "g")) == 2

    await wait_until(two, what="two applied, agg0 rejected")
    listed = run_conveyor(["dlq", "list", "--stream", "identity", "--json"], client)
    (dead,) = json.loads(listed.stdout)["dead_letters"]
    return str(dead["entry_id"])


async def test_a_repeat_with_the_same_key_replays_even_after_a_resolve(
    case: Case, keys: str, consumer: tuple[dict[str, str], Path]
) -> None:
    client, _ = consumer
    entry = await _dead_letter(case, client)
    reprocess = ["dlq", "reprocess", "--stream", "identity", "--id", entry]
    reprocess += ["--idempotency-key", keys]

    first = run_conveyor(reprocess, client)
    assert first.returncode == 0, first.stderr
    assert "requeued 1" in first.stdout, first.stdout
    resolve = ["dlq", "resolve", "--stream", "identity", "--id", entry, "--reason", "by hand"]
    resolved = run_conveyor(resolve, client)
    assert resolved.returncode == 0, resolved.stderr

    again = run_conveyor(reprocess, client)

    assert again.returncode == 0, again.stderr
    assert "requeued 1" in again.stdout and _REPLAYED in again.stdout
    other_key = run_conveyor([*reprocess[:-1], f"{keys}-new"], client)
    assert other_key.returncode == 6, "a new request for a resolved entry is still refused"
    assert "already resolved" in other_key.stderr


async def test_a_repeat_with_the_same_key_replays_after_the_dead_letter_is_gone(
    case: Case, keys: str, consumer: tuple[dict[str, str], Path]
) -> None:
    client, _ = consumer
    entry = await _dead_letter(case, client)
    reprocess = ["dlq", "reprocess", "--stream", "identity", "--id", entry]
    first = run_conveyor([*reprocess, "--idempotency-key", keys], client)
    assert first.returncode == 0, first.stderr
    # Trimmed from the stream and removed from the catalog (retention, or by hand).
    dlq = wire.Keys("identity", case.prefix).dlq
    assert await case.redis.xdel(dlq, entry) == 1
    await case.pg.execute(
        "DELETE FROM conveyor.dead_letters WHERE dlq_stream = $1 AND dlq_entry_id = $2", dlq, entry
    )
    unknown = run_conveyor([*reprocess, "--idempotency-key", f"{keys}-new"], client)
    assert unknown.returncode == 3 and "no dead letters" in unknown.stderr, unknown.stderr

    again = run_conveyor([*reprocess, "--idempotency-key", keys, "--json"], client)

    assert again.returncode == 0, again.stderr
    answer = json.loads(again.stdout)
    assert int(answer["requeued"]) == 1 and answer["replayed"] is True
    assert answer["idempotency_key"] == keys


async def test_a_replayed_answer_stored_without_skip_reasons_says_they_were_not_recorded(
    case: Case, keys: str, consumer: tuple[dict[str, str], Path]
) -> None:
    client, _ = consumer
    entry = await _dead_letter(case, client)
    reprocess = ["dlq", "reprocess", "--stream", "identity", "--id", entry]
    assert run_conveyor([*reprocess, "--idempotency-key", f"{keys}-a"], client).returncode == 0
    second = run_conveyor([*reprocess, "--idempotency-key", f"{keys}-b"], client)
    assert "skipped 1" in second.stdout, second.stdout
    await _store_without_skips(case.pg, f"{keys}-b")

    again = run_conveyor([*reprocess, "--idempotency-key", f"{keys}-b"], client)

    assert again.returncode == 0, again.stderr
    lines = [line.strip() for line in again.stdout.splitlines()]
    assert lines[0].startswith("requeued 0, duplicates 0, skipped 1 (1 of 1"), lines
    assert _REPLAYED in again.stdout
    assert "skipped 1 (reasons not recorded)" in lines, lines
    as_json = run_conveyor([*reprocess, "--idempotency-key", f"{keys}-b", "--json"], client)
    answer = json.loads(as_json.stdout)
    assert (int(answer["skipped"]), answer.get("skips", []), answer["replayed"]) == (1, [], True)
    # A skip stored with its entry id only.
    await case.pg.execute(
        "UPDATE conveyor.reprocess_requests SET outcome = outcome || $2::text::jsonb "
        "WHERE idempotency_key = $1",
        f"{keys}-b",
        json.dumps({"skips": [{"entry_id": entry}]}),
    )
    bare = run_conveyor([*reprocess, "--idempotency-key", f"{keys}-b"], client)
    assert f"skipped {entry}: reason not recorded" in bare.stdout, bare.stdout + bare.stderr


async def _store_without_skips(pg: asyncpg.Connection, key: str) -> None:
    """Rewrite the stored answer under `key` in the shape servers stored before they recorded
    why each dead letter was skipped: the counts only."""
    changed = await pg.execute(
        "UPDATE conveyor.reprocess_requests SET outcome = outcome - 'skips' "
        "WHERE idempotency_key = $1 AND outcome ? 'skips'",
        key,
    )
    assert changed == "UPDATE 1"
