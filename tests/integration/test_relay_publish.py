"""The hand-rolled XADD write: Redis rejecting part of a batch, a connection cut mid-reply."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter

from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import NewEvent, enqueue_many
from tests.integration.conftest import Case
from tests.integration.relay_support import drained, fill, running_relay, stream_ids, unpublished
from tests.processes import wait_until


def _event(i: int, topic: str) -> NewEvent:
    return NewEvent(events_pb2.UserRegistered(user_id=f"u{i}"), "user", f"u{i}", topic=topic)


async def test_a_rejected_xadd_does_not_append_the_rest_of_its_batch_again_on_every_retry(
    case: Case,
) -> None:
    """One topic's stream key holds a string (WRONGTYPE): its XADD is rejected, the batch rolls
    back and is retried (nothing is lost). The batch's other XADDs were applied: the retries
    append only the rejected rows again, so the healthy topic's stream holds each event once,
    however long the bad key stays."""
    bad = wire.Keys("broken", case.prefix).events
    await case.redis.set(bad, "not a stream")
    try:
        async with running_relay(
            **case.relay_settings(poll_interval=0.2, backoff_initial=0.05, backoff_max=0.1)
        ):
            async with case.pg.transaction():  # one commit: any relay claims them together
                good = await enqueue_many(case.pg, [_event(i, "identity") for i in range(5)],
                                          schema=case.schema)  # fmt: skip
                broken = await enqueue_many(case.pg, [_event(5, "broken")], schema=case.schema)
            await asyncio.sleep(3)
            assert await unpublished(case.pg, case.schema) == 6, "nothing committed as published"
            copies = Counter(await stream_ids(case.redis, case.prefix))
            assert set(copies) == set(good)
            assert max(copies.values()) == 1, f"a healthy event appended {max(copies.values())}x"
            await case.redis.delete(bad)  # the key fixed: the batch goes through
            await wait_until(lambda: drained(case.pg, case.schema), timeout=10, what="drained")
        copies = Counter(await stream_ids(case.redis, case.prefix))
        copies.update(await stream_ids(case.redis, case.prefix, "broken"))
        assert copies == Counter(good + broken), "every event once"
    finally:
        await case.redis.delete(bad)


class MidReplyCut:
    """A loopback proxy to Redis that, once `arm()`ed, forwards only the first `keep` bytes of
    the next server reply larger than `keep`, then drops that connection."""

    def __init__(self, port: int, keep: int) -> None:
        self._target, self._keep = port, keep
        self._armed = threading.Event()
        self.fired = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def arm(self) -> None:
        self._armed.set()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if replies and self._armed.is_set() and len(data) > self._keep:
                    self._armed.clear()
                    dst.sendall(data[: self._keep])
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


async def test_a_connection_dropped_mid_reply_loses_nothing_and_misreads_nothing(
    case: Case,
) -> None:
    """Half a batch's replies arrive, then the connection drops.
    The batch rolls back and is retried on a new connection; every event reaches the stream
    (the first half twice, which at-least-once allows)."""
    cut = MidReplyCut(6379, keep=200)
    url = case.redis_url.replace(":6379", f":{cut.port}")
    try:
        async with running_relay(
            **case.relay_settings(
                redis_url=url, batch_size=100, backoff_initial=0.05, backoff_max=0.1
            )
        ):
            first = await fill(case.pg, case.schema, 10)
            await wait_until(lambda: drained(case.pg, case.schema), timeout=10, what="drained")
            cut.arm()
            ids = await fill(case.pg, case.schema, 100)
            await wait_until(lambda: drained(case.pg, case.schema), timeout=10, what="retried")
            assert cut.fired.is_set()
            more = await fill(case.pg, case.schema, 10)
            await wait_until(lambda: drained(case.pg, case.schema), timeout=10, what="after")
        copies = Counter(await stream_ids(case.redis, case.prefix))
        assert set(copies) == set(first + ids + more)
        assert all(copies[i] == 1 for i in first + more)
    finally:
        cut.close()
