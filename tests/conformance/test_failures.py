"""Publish/subscribe conformance, failing handlers: a failed attempt is delivered again, and
failing events never hold back the others."""

from __future__ import annotations

import asyncio
import contextlib

from consumers import EventContext, Retry
from tests.conformance.support import (
    Member,
    applied,
    applied_rows,
    assert_delivered,
    create_applied,
    members,
    produce,
    recording_router,
    settings_for,
    wait_applied,
)
from tests.integration.conftest import Case
from tests.integration.relay_support import drained, running_relay
from tests.processes import wait_until


async def test_an_event_whose_handler_raised_is_delivered_again_and_applied(
    case: Case, mode: str
) -> None:
    """Handlers of one event in five raise once, after writing: a plain exception, or
    `Retry`. Each is delivered again and applied; the failed attempt's write rolled back."""
    await create_applied(case.pg, case.schema)
    failed: list[int] = []

    def fail_once(seq: int, ctx: EventContext) -> None:
        if ctx.attempt == 1 and seq % 10 == 0:
            failed.append(seq)
            raise RuntimeError("the mail server said try later")
        if ctx.attempt == 1 and seq % 10 == 5:
            failed.append(seq)
            raise Retry("not yet", delay=0.1)

    router = recording_router(case.schema, ["orders"], after=fail_once)
    async with (
        running_relay(**case.relay_settings()),
        members((router, settings_for(case, "mailer", "m1", mode))),
    ):
        ids = await produce(case.pg, case.schema, range(100), topic="orders")
        counts = await wait_applied(case, "mailer", ids, topic="orders")
    assert sorted(failed) == [s for s in range(100) if s % 5 == 0], "each failed once"
    assert_delivered(counts, ids, mode)
    rows = await applied_rows(case.pg, case.schema, "mailer")
    retried = {r["seq"]: r["attempt"] for r in rows if r["seq"] % 5 == 0}
    assert retried == dict.fromkeys(failed, 2), "applied by the second delivery"


async def test_events_failing_a_few_times_do_not_hold_back_the_others(
    case: Case, mode: str
) -> None:
    """One event in ten fails twice, then succeeds. Every event is applied (once in
    exactly-once mode), each failing one on its third attempt, and events behind each failing
    one in the stream were applied before it: the stream kept flowing (ten events a batch)."""
    await create_applied(case.pg, case.schema)

    def fail_twice(seq: int, ctx: EventContext) -> None:
        if seq % 10 == 3 and ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} of event {seq} fails")

    router = recording_router(case.schema, ["orders"], after=fail_twice)
    settings = settings_for(case, "ledger", "m1", mode, batch_size=10, retry_backoff=0.2)
    async with running_relay(**case.relay_settings()):
        ids = await produce(case.pg, case.schema, range(100), topic="orders")
        # All in the stream first, so each failing event is read in one batch with the events
        # behind it: they must not wait for its retries.
        await wait_until(lambda: drained(case.pg, case.schema), what="every event published")
        async with members((router, settings)):
            counts = await wait_applied(case, "ledger", ids, topic="orders")
    assert_delivered(counts, ids, mode)
    rows = await applied_rows(case.pg, case.schema, "ledger")
    when = {r["seq"]: r["at"] for r in rows}
    attempts = {r["seq"]: r["attempt"] for r in rows if r["seq"] % 10 == 3}
    assert attempts == {s: 3 for s in range(100) if s % 10 == 3}
    for slow in attempts:
        overtaken = [s for s in range(slow + 1, 100) if s % 10 != 3 and when[s] < when[slow]]
        assert overtaken, f"nothing behind event {slow} was applied while it was retried"


async def test_a_handler_raising_cancelled_error_fails_only_that_attempt(case: Case) -> None:
    """A handler that lets a stray `asyncio.CancelledError` out (a library's timeout, say;
    nothing cancelled the consumer) on event 3's first attempt: like any other error, that
    attempt fails and is retried, the other events are applied, and the consumer keeps
    running."""
    await create_applied(case.pg, case.schema)

    def cancelled_once(seq: int, ctx: EventContext) -> None:
        if seq == 3 and ctx.attempt == 1:
            raise asyncio.CancelledError

    member = Member(
        recording_router(case.schema, ["orders"], after=cancelled_once),
        settings_for(case, "mailer", "m1", "exactly-once"),
    )
    async with running_relay(**case.relay_settings()):
        ids = await produce(case.pg, case.schema, range(20), topic="orders")
        await member.start()
        try:

            async def settled_or_dead() -> bool:
                done = len(await applied(case.pg, case.schema, "mailer")) == len(ids)
                return done or not member.running

            await wait_until(settled_or_dead, timeout=20, what="all applied, or the consumer gone")
            assert member.running, "the consumer stopped: nothing else is consumed"
            counts = await wait_applied(case, "mailer", ids, topic="orders")
        finally:
            member.begin_stop()
            with contextlib.suppress(asyncio.CancelledError):
                await member.stopped()
    assert_delivered(counts, ids, "exactly-once")
