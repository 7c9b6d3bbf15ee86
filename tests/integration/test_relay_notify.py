"""Producers NOTIFY only while a relay waits for it (app_0005): the trigger's rule, the lock
that lets no producer slip between "busy" and "waiting", relays that died in either state, old
relays, and the downgrade."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from admin import migrations
from conveyor.database import RELAY_LISTENERS_TABLE, notify_channel
from relay.notify import Listener, Listeners
from tests.integration.conftest import Case
from tests.integration.relay_support import fill, running_relay, stream_ids
from tests.processes import start_conveyor, stop, wait_until


class Notifications:
    """A LISTENing connection that counts the outbox channel's notifications."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_args: object) -> None:
        self.count += 1


@asynccontextmanager
async def listening(database_url: str, schema: str) -> AsyncIterator[Notifications]:
    conn = await asyncpg.connect(database_url)
    seen = Notifications()
    await conn.add_listener(notify_channel(schema), seen)
    try:
        yield seen
    finally:
        await conn.close()


async def notified(pg: asyncpg.Connection, seen: Notifications, schema: str) -> bool:
    """Commit one event; True when its commit sent a NOTIFY."""
    before = seen.count
    await fill(pg, schema, 1)
    await asyncio.sleep(0.2)  # a NOTIFY arrives within milliseconds of the commit
    return seen.count > before


async def rows(pg: asyncpg.Connection, schema: str) -> list[tuple[int, bool]]:
    found = await pg.fetch(
        f"SELECT pid, waiting FROM {schema}.{RELAY_LISTENERS_TABLE} ORDER BY pid"
    )
    return [(r["pid"], r["waiting"]) for r in found]


async def has(case: Case, wanted: set[uuid.UUID]) -> bool:
    return wanted <= set(await stream_ids(case.redis, case.prefix))


async def test_the_trigger_notifies_unless_every_relay_says_busy(case: Case) -> None:
    table = f"{case.schema}.{RELAY_LISTENERS_TABLE}"
    async with listening(case.database_url, case.schema) as seen:
        assert await notified(case.pg, seen, case.schema), "no relay registered: notify"
        await case.pg.execute(f"INSERT INTO {table} (pid, waiting) VALUES (1, false)")
        assert not await notified(case.pg, seen, case.schema), "the only relay is busy"
        await case.pg.execute(f"INSERT INTO {table} (pid, waiting) VALUES (2, true)")
        assert await notified(case.pg, seen, case.schema), "one relay waits"


async def test_a_relay_cannot_say_waiting_while_a_producer_that_read_busy_is_open(
    case: Case,
) -> None:
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    producer = await asyncpg.connect(case.database_url)
    try:
        listeners = Listeners(pool, case.schema)
        me = Listener(pid=424242, backend_start=None)
        await listeners.register(me)  # busy
        async with producer.transaction():
            await fill(producer, case.schema, 1, chunk=1)  # the trigger read "busy"
            assert not await listeners.waiting(me), "refused while that producer is open"
        assert await listeners.waiting(me), "granted once it committed"
        assert (424242, True) in await rows(case.pg, case.schema)
    finally:
        await producer.close()
        await pool.close()


async def test_a_producer_whose_trigger_waited_for_the_announcement_reads_it_and_notifies(
    case: Case,
) -> None:
    """The trigger's read takes its snapshot after its lock: a producer held up by a relay
    saying "waiting" sees that and notifies, rather than reading the "busy" it waited behind."""
    table = f"{case.schema}.{RELAY_LISTENERS_TABLE}"
    await case.pg.execute(f"INSERT INTO {table} (pid, waiting) VALUES (1, false)")
    relay = await asyncpg.connect(case.database_url)
    producer = await asyncpg.connect(case.database_url)
    try:
        async with listening(case.database_url, case.schema) as seen:
            announcing = relay.transaction()
            await announcing.start()
            await relay.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            await relay.execute(f"UPDATE {table} SET waiting = true")
            producing = asyncio.create_task(fill(producer, case.schema, 1))
            blocked = (
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                producer.get_server_pid(),
            )

            async def held_up() -> bool:
                return bool(await case.pg.fetchval(*blocked))

            await wait_until(held_up, timeout=10, what="the producer's trigger waits")
            await announcing.commit()
            await producing
            await wait_until(lambda: _positive(seen.count), timeout=10, what="its NOTIFY")
    finally:
        await producer.close()
        await relay.close()


async def _positive(n: int) -> bool:
    return n > 0


async def test_an_event_committed_while_the_relay_waits_is_published_at_once(case: Case) -> None:
    async with running_relay(**case.relay_settings(poll_interval=3600)):

        async def waiting() -> bool:
            return any(w for _pid, w in await rows(case.pg, case.schema))

        await wait_until(waiting, timeout=10, what="the relay says it waits")
        (event_id,) = await fill(case.pg, case.schema, 1)
        await wait_until(lambda: has(case, {event_id}), timeout=10, what="published on NOTIFY")


async def test_a_long_producer_transaction_does_not_hold_back_the_events_of_others(
    case: Case,
) -> None:
    """While one producer sits between its INSERT and its COMMIT, the relay cannot say
    "waiting", so other producers reading "busy" send no NOTIFY: it keeps looking."""
    slow = await asyncpg.connect(case.database_url)
    try:
        async with slow.transaction():
            (late,) = await fill(slow, case.schema, 1)  # its trigger holds the table's lock
            async with running_relay(**case.relay_settings(poll_interval=3600)):

                async def registered() -> bool:
                    return bool(await rows(case.pg, case.schema))

                await wait_until(registered, timeout=10, what="the relay's row")
                assert not any(w for _pid, w in await rows(case.pg, case.schema))
                quick = set(await fill(case.pg, case.schema, 1))  # reads "busy": no NOTIFY
                await wait_until(lambda: has(case, quick), timeout=10, what="the quick event")
                assert not any(w for _pid, w in await rows(case.pg, case.schema)), "still busy"
                assert not await has(case, {late})
    finally:
        await slow.close()


async def test_a_stream_of_commits_is_published_with_the_relay_mostly_busy(case: Case) -> None:
    async with (
        running_relay(**case.relay_settings(poll_interval=3600)),
        listening(case.database_url, case.schema) as seen,
    ):
        ids = []
        for _ in range(300):
            ids += await fill(case.pg, case.schema, 1)
            await asyncio.sleep(0.001)
        await wait_until(lambda: has(case, set(ids)), timeout=30, what="every event published")
    assert sorted(await stream_ids(case.redis, case.prefix)) == sorted(ids), "each once"
    assert seen.count < len(ids), "commits made while the relay was busy sent no NOTIFY"


async def test_a_busy_row_left_by_a_dead_relay_delays_events_by_at_most_a_poll(
    case: Case,
) -> None:
    """A relay killed while busy leaves producers silent; a relay without a LISTEN connection
    (an earlier version, or one whose connection is down) still publishes on its poll."""
    table = f"{case.schema}.{RELAY_LISTENERS_TABLE}"
    await case.pg.execute(f"INSERT INTO {table} (pid, waiting) VALUES (1, false)")
    async with (
        listening(case.database_url, case.schema) as seen,
        running_relay(**case.relay_settings(listen=False, poll_interval=0.2)),
    ):
        ids = await fill(case.pg, case.schema, 5)
        await wait_until(lambda: has(case, set(ids)), timeout=10, what="published on a poll")
    assert seen.count == 0, "no NOTIFY: the only row says busy"


async def test_a_killed_relays_row_is_swept_and_its_events_published_by_the_next(
    case: Case,
) -> None:
    proc = start_conveyor(["relay", "--poll-interval", "3600"], case.env)
    try:

        async def registered() -> bool:
            return bool(await rows(case.pg, case.schema))

        await wait_until(registered, timeout=30, what="the relay's row")
        [(dead_pid, _)] = await rows(case.pg, case.schema)
    finally:
        stop(proc, signal.SIGKILL)

    async def backend_gone() -> bool:  # PostgreSQL notices the closed socket a moment later
        return not await case.pg.fetchval(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", dead_pid
        )

    await wait_until(backend_gone, timeout=30, what="the killed relay's LISTEN backend gone")
    ids = await fill(case.pg, case.schema, 3)  # nobody publishes these now
    async with running_relay(**case.relay_settings(poll_interval=3600)):
        await wait_until(lambda: has(case, set(ids)), timeout=10, what="published at start")
        left = [pid for pid, _ in await rows(case.pg, case.schema)]
        assert len(left) == 1 and dead_pid not in left, "the dead relay's row was swept"
    assert await rows(case.pg, case.schema) == [], "a clean stop deletes the relay's row"


async def test_downgrade_restores_the_trigger_that_always_notifies(
    pg: asyncpg.Connection, database_url: str, schema: str
) -> None:
    await asyncio.to_thread(migrations.upgrade, database_url, schema)
    table = f"{schema}.{RELAY_LISTENERS_TABLE}"
    await pg.execute(f"INSERT INTO {table} (pid, waiting) VALUES (1, false)")
    async with listening(database_url, schema) as seen:
        assert not await notified(pg, seen, schema)
        await asyncio.to_thread(migrations.downgrade, database_url, schema, "app_0004")
        assert await pg.fetchval("SELECT to_regclass($1)", table) is None
        assert await notified(pg, seen, schema), "app_0004's trigger notifies on every commit"
        await asyncio.to_thread(migrations.upgrade, database_url, schema)
        assert await notified(pg, seen, schema), "no relay registered: notify"


async def test_a_relay_keeps_publishing_on_notify_after_a_downgrade_under_it(case: Case) -> None:
    async with running_relay(**case.relay_settings(poll_interval=3600)):
        await asyncio.to_thread(migrations.downgrade, case.database_url, case.schema, "app_0004")
        for _ in range(3):
            ids = set(await fill(case.pg, case.schema, 1))
            await wait_until(lambda: has(case, ids), timeout=10, what="published")  # noqa: B023 - awaited here
