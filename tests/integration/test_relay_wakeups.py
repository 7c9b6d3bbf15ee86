"""The conditional NOTIFY (app_0005): commits that a waiting relay must hear of."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from admin import migrations
from conveyor.database import RELAY_LISTENERS_TABLE
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from tests.integration.conftest import Case
from tests.integration.relay_support import fill, running_relay, stream_ids
from tests.processes import wait_until


async def _row_says(pg: asyncpg.Connection, schema: str, waiting: bool) -> bool:
    found = await pg.fetch(f"SELECT waiting FROM {schema}.{RELAY_LISTENERS_TABLE}")
    return bool(found) and all(r["waiting"] is waiting for r in found)


async def _has(case: Case, wanted: set[uuid.UUID]) -> bool:
    return wanted <= set(await stream_ids(case.redis, case.prefix))


@pytest.mark.parametrize("isolation", ["read_committed", "repeatable_read", "serializable"])
async def test_a_producer_whose_snapshot_saw_busy_wakes_a_waiting_relay(
    case: Case, isolation: str
) -> None:
    """A REPEATABLE READ (or SERIALIZABLE) producer's trigger would read the listeners table with
    the snapshot of its transaction's first statement, not one taken after its lock: one that
    began while the relay said busy and inserts after the relay said waiting would read "busy"
    (the relay's ACCESS EXCLUSIVE lock was free, the producer had not touched the table yet).
    Such producers notify unconditionally, so the event is not left for the poll interval (here
    an hour). READ COMMITTED reads with a snapshot taken after its lock."""
    producer = await asyncpg.connect(case.database_url)
    streamer = await asyncpg.connect(case.database_url)
    try:
        async with running_relay(**case.relay_settings(poll_interval=3600)):
            await wait_until(
                lambda: _row_says(case.pg, case.schema, True), timeout=10, what="waiting"
            )
            # A steady flow of commits turns the relay's row busy.
            flowing = True

            async def flow() -> None:
                while flowing:
                    await fill(streamer, case.schema, 1)
                    await asyncio.sleep(0.001)

            task = asyncio.create_task(flow())
            rr = producer.transaction(isolation=isolation)
            for _ in range(200):
                if await _row_says(case.pg, case.schema, False):
                    await rr.start()
                    await producer.fetchval("SELECT 1")  # the transaction's snapshot
                    if await _row_says(case.pg, case.schema, False):
                        break  # the snapshot was taken while the row said busy
                    await rr.rollback()
                    rr = producer.transaction(isolation=isolation)
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the relay's row never said busy")
            flowing = False
            await task
            # The flow drained, the relay says waiting again: its lock was free.
            await wait_until(
                lambda: _row_says(case.pg, case.schema, True), timeout=10, what="waiting again"
            )
            (late,) = await enqueue_many(
                producer,
                [
                    NewEvent(
                        events_pb2.UserRegistered(user_id="late"), "user", "late", topic="identity"
                    )
                ],
                schema=case.schema,
            )
            await rr.commit()
            await wait_until(
                lambda: _has(case, {late}), timeout=10, what="the event of the RR producer"
            )
    finally:
        await producer.close()
        await streamer.close()


class ReplyCutter:
    """A loopback proxy to PostgreSQL that, once `arm()`ed, drops the first connection whose
    server-to-client data contains `pattern`, without forwarding that data: the statement it
    answers ran (and, in autocommit, committed), but the client only sees its connection lost."""

    def __init__(self, port: int, pattern: bytes) -> None:
        self._target = port
        self._pattern = pattern
        self._armed = threading.Event()
        self.fired = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def arm(self) -> None:
        self.fired.clear()
        self._armed.set()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._socks += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if (
                    replies
                    and self._armed.is_set()
                    and not self.fired.is_set()
                    and self._pattern in data
                ):
                    self.fired.set()
                    for sock in (src, dst):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                            sock.close()
                    return
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


async def test_a_busy_flag_whose_reply_was_lost_does_not_leave_the_relay_deaf(case: Case) -> None:
    """The relay writes its row busy (`UPDATE ... SET waiting = false`, autocommit); the
    connection drops after PostgreSQL committed it, before the reply. The forwarder treats the
    row's state as unknown (it believes busy, which is safe either way), so the next time it
    finds nothing it says "waiting" again: an event committed afterwards is published on its
    NOTIFY, not after the poll interval (here an hour)."""
    url = make_url(case.database_url)
    cutter = ReplyCutter(url.port or 5432, b"UPDATE 1\x00")
    via_cutter = url.set(host="127.0.0.1", port=cutter.port).render_as_string(hide_password=False)
    streamer = await asyncpg.connect(case.database_url)
    try:
        async with running_relay(
            **case.relay_settings(
                database_url=via_cutter, poll_interval=3600, backoff_initial=0.05, backoff_max=0.2
            )
        ):
            for _attempt in range(3):
                await wait_until(
                    lambda: _row_says(case.pg, case.schema, True), timeout=10, what="waiting"
                )
                cutter.arm()
                for _ in range(2000):  # a steady flow turns the row busy: that reply is lost
                    await fill(streamer, case.schema, 1)
                    await asyncio.sleep(0.001)
                    if cutter.fired.is_set():
                        break
                assert cutter.fired.is_set(), "the relay never wrote its row busy"
                await asyncio.sleep(0.5)  # the relay retries and drains the flow
                later = set(await fill(case.pg, case.schema, 1))
                await wait_until(
                    lambda later=later: _has(case, later), timeout=10, what="a later event"
                )
    finally:
        await streamer.close()
        cutter.close()


async def test_a_relay_started_on_a_schema_below_app_0005_publishes_on_notify(
    pg: asyncpg.Connection, database_url: str, redis_url: str, schema: str, key_prefix: str
) -> None:
    """Control (passes): no listeners table; the relay warns once and waits for the NOTIFY
    app_0004's trigger sends on every commit."""
    await asyncio.to_thread(migrations.upgrade, database_url, schema, "app_0004")
    case = Case(database_url, redis_url, schema, key_prefix, pg, None)
    async with running_relay(**case.relay_settings(poll_interval=3600)) as relay:
        await asyncio.sleep(1.5)
        ids = set(await fill(pg, schema, 1))

        async def published() -> bool:
            return relay.forwarders[schema].published >= 1

        await wait_until(published, timeout=10, what="published on NOTIFY")
    assert ids
