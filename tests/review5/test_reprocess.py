"""Reprocess answers against a real `conveyor consume`: a repeated request with its idempotency
key replays the first answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.test_cli_messages import fixture_consumer  # noqa: F401 - fixture
from tests.processes import run_conveyor, wait_until

pytestmark = pytest.mark.slow


# The CLI says "repeat with --idempotency-key K to retry safely", and a repeat is answered from the
# stored outcome (`replayed`, "this one requeued nothing"). But when the dead letter was resolved
# after the first call (resolve is allowed while it is reprocessing), the repeat is refused with
# FAILED_PRECONDITION "already resolved cannot be reprocessed", exit 6: the check runs before the
# idempotency key is looked at. A script retrying a call whose answer it lost gets an error for
# a call that succeeded. Expected: exit 0 with the first call's outcome, marked replayed.
async def test_a_repeat_with_the_same_key_replays_even_after_a_resolve(
    case: Case, catalog_cleanup: None, consumer: tuple[dict[str, str], Path]
) -> None:
    client, _ = consumer
    await create_effects(case.pg, case.schema)
    await publish(case.redis, case.prefix, 3, aggregates=3)

    async def two() -> bool:
        return len(await effect_counts(case.pg, case.schema, "g")) == 2

    await wait_until(two, what="two applied, agg0 rejected")
    listed = run_conveyor(["dlq", "list", "--stream", "identity", "--json"], client)
    (dead,) = json.loads(listed.stdout)["dead_letters"]
    entry = dead["entry_id"]
    key = ["--idempotency-key", f"k-{case.prefix}"]
    reprocess = ["dlq", "reprocess", "--stream", "identity", "--id", entry, *key]

    first = run_conveyor(reprocess, client)
    assert first.returncode == 0, first.stderr
    assert "requeued 1" in first.stdout, first.stdout
    resolve = ["dlq", "resolve", "--stream", "identity", "--id", entry, "--reason", "by hand"]
    resolved = run_conveyor(resolve, client)
    assert resolved.returncode == 0, resolved.stderr

    again = run_conveyor(reprocess, client)

    assert again.returncode == 0, again.stderr
    assert "requeued 1" in again.stdout and "this one requeued nothing" in again.stdout
