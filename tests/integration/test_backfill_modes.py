"""`conveyor relay backfill` into an at-least-once group: it keeps no ledger, so it applies again
every event of the window it had applied; the command says so instead of implying the repeats
are absorbed."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Case
from tests.integration.consumer_support import (
    consumer_settings,
    create_effects,
    effect_counts,
    effect_router,
    running_consumer,
)
from tests.integration.relay_support import drained, fill, running_relay
from tests.integration.test_backfill import TOPIC, applied, backfill
from tests.processes import wait_until

N = 5


@pytest.mark.usefixtures("catalog_cleanup")
async def test_backfilling_an_at_least_once_group_says_it_applies_repeats_again(
    case: Case,
) -> None:
    await create_effects(case.pg, case.schema)
    router = effect_router(case.schema)
    await fill(case.pg, case.schema, N)
    loose = consumer_settings(case, "loose", mode="at-least-once")
    async with running_relay(**case.relay_settings()), running_consumer(router, **loose):
        await wait_until(lambda: drained(case.pg, case.schema), what="the outbox published")
        await applied(case, "loose", N)
        dry = backfill(case, "loose", "--dry-run")
        sent = backfill(case, "loose", "--json")

        async def twice() -> bool:
            counts = await effect_counts(case.pg, case.schema, "loose")
            return set(counts.values()) == {2}

        await wait_until(twice, timeout=60, what="each event applied a second time")
    assert dry.returncode == 0, dry.stderr
    assert (
        "group loose is at-least-once (no ledger): it applies again every event of the window "
        "it has applied already"
    ) in dry.stdout, dry.stdout
    assert json.loads(sent.stdout)["mode"] == "at-least-once"
    assert TOPIC == "identity"
