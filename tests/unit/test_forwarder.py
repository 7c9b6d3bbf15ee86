"""The forwarder's ordering and failure handling, against in-memory outbox and stream fakes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from relay.errors import XaddRejected
from relay.forwarder import Forwarder
from relay.metrics import RelayMetrics
from relay.publisher import ResetReport
from relay.settings import RelaySettings


class FakeOutbox:
    """Rows 1..n; a claim locks rows and marks them only if its block exits normally."""

    schema = "fake"

    def __init__(self, n: int) -> None:
        self.unpublished = set(range(1, n + 1))
        self.locked: set[int] = set()

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Sequence[Any]]:
        await asyncio.sleep(random.random() / 1000)
        ids = sorted(self.unpublished - self.locked)[:limit]
        self.locked |= set(ids)
        try:
            yield [(i, f"e{i}", "topic", "T", "agg", None, b"") for i in ids]
            self.unpublished -= set(ids)
        finally:
            self.locked -= set(ids)

    async def pending(self) -> bool:
        return bool(self.unpublished)

    async def rest(self) -> None:
        return None

    async def backlog(self) -> tuple[int, float]:
        return len(self.unpublished), 0.0

    async def clean_up(self, retention_seconds: float, limit: int) -> int:
        return 0


class FakeStream:
    def __init__(self, fail_every: int = 0) -> None:
        self.entries: list[int] = []
        self.calls = 0
        self.fail_every = fail_every

    def stream_key(self, topic: str, aggregate_id: str = "") -> str:
        return topic

    async def publish(self, rows: Sequence[Any]) -> dict[str, int]:
        self.calls += 1
        # Odd calls are slow, so a later batch would overtake an earlier one if it could.
        await asyncio.sleep(0.004 if self.calls % 2 else 0)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise ConnectionError("redis went away")
        self.entries.extend(row[0] for row in rows)
        return {"topic": len(rows)}

    async def check_reset(self) -> ResetReport | None:
        return None


async def drain(outbox: FakeOutbox, stream: FakeStream, **settings: Any) -> Forwarder:
    stopping = asyncio.Event()
    s = RelaySettings(poll_interval=0.01, backoff_initial=0.001, backoff_max=0.01, **settings)
    forwarder = Forwarder(outbox, stream, s, RelayMetrics(), stopping)
    task = asyncio.create_task(forwarder.run())
    async with asyncio.timeout(10):
        while outbox.unpublished:
            await asyncio.sleep(0.005)
    stopping.set()
    forwarder.wake()
    await task
    return forwarder


@pytest.mark.parametrize("concurrency", [1, 2, 4])
async def test_batches_in_flight_still_publish_in_outbox_order(concurrency: int) -> None:
    outbox, stream = FakeOutbox(2000), FakeStream()
    forwarder = await drain(outbox, stream, batch_size=37, concurrency=concurrency)
    assert stream.entries == list(range(1, 2001))
    assert forwarder.published == 2000


async def test_a_failed_publish_leaves_rows_unpublished_and_is_retried() -> None:
    outbox, stream = FakeOutbox(500), FakeStream(fail_every=3)
    await drain(outbox, stream, batch_size=50, concurrency=2)
    assert set(stream.entries) == set(range(1, 501)), "every row reached the stream"
    assert not outbox.unpublished


async def test_stop_interrupts_the_backoff_and_keeps_unpublished_rows() -> None:
    outbox = FakeOutbox(10)
    stream = FakeStream(fail_every=1)
    stopping = asyncio.Event()
    s = RelaySettings(batch_size=5, backoff_initial=5.0, backoff_max=5.0)
    forwarder = Forwarder(outbox, stream, s, RelayMetrics(), stopping)
    task = asyncio.create_task(forwarder.run())
    while forwarder.last_error is None:  # the first batch failed; its 5 s backoff begins
        await asyncio.sleep(0.01)
    stopping.set()
    forwarder.wake()
    async with asyncio.timeout(2):
        await task
    assert outbox.unpublished == set(range(1, 11))
    assert forwarder.last_error == "ConnectionError: redis went away"


class RejectingStream(FakeStream):
    """Rejects rows whose id is in `bad` (an error reply each), appending the others, until
    `bad` is emptied (the stream key fixed)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad = bad

    async def publish(self, rows: Sequence[Any]) -> dict[str, int]:
        self.calls += 1
        good = [row[0] for row in rows if row[0] not in self.bad]
        self.entries.extend(good)
        if len(good) < len(rows):
            raise XaddRejected(ValueError("WRONGTYPE"), rejected=len(rows) - len(good),
                               accepted=frozenset(good))  # fmt: skip
        return {"topic": len(rows)}


async def test_a_retry_after_rejected_xadds_appends_only_what_redis_did_not() -> None:
    outbox, stream = FakeOutbox(30), RejectingStream(bad={5, 17})
    metrics = RelayMetrics(MeterProvider().get_meter("test"))  # counts of this test alone
    stopping = asyncio.Event()
    s = RelaySettings(poll_interval=0.01, backoff_initial=0.001, backoff_max=0.01, batch_size=10)
    forwarder = Forwarder(outbox, stream, s, metrics, stopping)
    task = asyncio.create_task(forwarder.run())
    async with asyncio.timeout(10):
        while stream.calls < 20:  # the batch of row 5 is retried, again and again
            await asyncio.sleep(0.001)
    assert outbox.unpublished == set(range(1, 31)), "nothing rolled back is lost"
    assert sorted(stream.entries) == [i for i in range(1, 11) if i != 5], "no copy appended"
    stream.bad.clear()  # the stream key fixed
    async with asyncio.timeout(10):
        while outbox.unpublished:
            await asyncio.sleep(0.001)
    stopping.set()
    forwarder.wake()
    await task
    assert sorted(stream.entries) == list(range(1, 31)), "each row appended once"
    assert forwarder.published == 30
    assert metrics.published._counts == {"topic": 30}


async def test_a_failure_another_relay_made_good_no_longer_reports_publishing_fails() -> None:
    """A batch fails; another relay publishes its rows meanwhile; this forwarder then finds the
    outbox empty: nothing of it is failing any more, so its status drops the error (health said
    "publishing fails" until a batch of its own committed, which an idle outbox never brings)."""
    outbox = FakeOutbox(5)
    stream = FakeStream(fail_every=1)
    stopping = asyncio.Event()
    s = RelaySettings(batch_size=5, poll_interval=0.02, backoff_initial=0.05, backoff_max=0.05)
    forwarder = Forwarder(outbox, stream, s, RelayMetrics(), stopping)
    task = asyncio.create_task(forwarder.run())
    try:
        async with asyncio.timeout(5):
            while forwarder.last_error is None:
                await asyncio.sleep(0.005)
        outbox.unpublished.clear()  # the other relay's batch committed
        async with asyncio.timeout(5):
            while forwarder.last_error is not None:
                await asyncio.sleep(0.01)
    finally:
        stopping.set()
        forwarder.wake()
        await task
    assert stream.entries == [], "this relay appended nothing"
