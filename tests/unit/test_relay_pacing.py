"""How the forwarder paces its claims (one claim per wake-up, gathering, saying "waiting" to
producers and looking once more), against in-memory fakes of the outbox, stream and flag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from relay.forwarder import Forwarder
from relay.metrics import RelayMetrics
from relay.publisher import ResetReport
from relay.settings import RelaySettings


class Outbox:
    """Rows committed by `commit`; counts claims. `on_claim` runs before each claim reads."""

    schema = "fake"

    def __init__(self) -> None:
        self.unpublished: list[int] = []
        self.claims = 0
        self.looks = 0
        self.rests = 0
        self.on_claim: Callable[[], None] | None = None
        self._next_id = 1

    def commit(self, n: int = 1) -> None:
        self.unpublished += range(self._next_id, self._next_id + n)
        self._next_id += n

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Sequence[Any]]:
        self.claims += 1
        if self.on_claim is not None:
            self.on_claim()
        ids, self.unpublished = self.unpublished[:limit], self.unpublished[limit:]
        yield [(i, f"e{i}", "topic", "T", "agg", None, b"") for i in ids]

    async def pending(self) -> bool:
        self.looks += 1
        return bool(self.unpublished)

    async def rest(self) -> None:
        self.rests += 1

    async def backlog(self) -> tuple[int, float]:
        return len(self.unpublished), 0.0

    async def clean_up(self, retention_seconds: float, limit: int) -> int:
        return 0


class Stream:
    def __init__(self) -> None:
        self.entries: list[int] = []

    def stream_key(self, topic: str, aggregate_id: str = "") -> str:
        return topic

    async def publish(self, rows: Sequence[Any]) -> dict[str, int]:
        self.entries += [row[0] for row in rows]
        return {"topic": len(rows)} if rows else {}

    async def check_reset(self) -> ResetReport | None:
        return None


class Flag:
    """The relay's row in the listeners table; `refuse` "waiting" that many times first."""

    def __init__(
        self,
        refuse: int = 0,
        on_waiting: Callable[[], None] | None = None,
        lose: Sequence[str] = (),
    ) -> None:
        self.refuse = refuse
        self.on_waiting = on_waiting
        self.lose = list(lose)
        """Writes ("waiting", "busy") whose next one applies, then loses its reply (raises)."""
        self.calls: list[str] = []
        self.waiting_now = False

    def _reply(self, call: str) -> None:
        if call in self.lose:
            self.lose.remove(call)
            raise ConnectionError(f"the reply to {call!r} was lost")

    async def waiting(self) -> bool:
        self.calls.append("waiting")
        if self.on_waiting is not None:
            self.on_waiting()
        if self.refuse > 0:
            self.refuse -= 1
            return False
        self.waiting_now = True
        self._reply("waiting")
        return True

    async def busy(self) -> None:
        self.calls.append("busy")
        self.waiting_now = False
        self._reply("busy")


class Running:
    def __init__(self, outbox: Outbox, flag: Flag | None, **settings: Any) -> None:
        self.outbox, self.stream = outbox, Stream()
        self.stopping = asyncio.Event()
        defaults = {"poll_interval": 3600.0, "gather_delay": 0.001, "backoff_initial": 0.001}
        s = RelaySettings(**(defaults | settings))
        self.forwarder = Forwarder(outbox, self.stream, s, RelayMetrics(), self.stopping)
        if flag is not None:
            self.forwarder.listen(flag)
        self.task = asyncio.create_task(self.forwarder.run())

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                await asyncio.sleep(0.001)

    async def stop(self) -> None:
        self.stopping.set()
        self.forwarder.wake()
        async with asyncio.timeout(10):
            await self.task


async def test_one_notify_wakes_one_claim_not_one_per_worker() -> None:
    outbox, flag = Outbox(), Flag()
    run = Running(outbox, flag, concurrency=4)
    await run.until(lambda: flag.waiting_now)
    await asyncio.sleep(0.05)  # every worker is waiting now
    before = outbox.claims
    outbox.commit()
    run.forwarder.wake()
    await run.until(lambda: run.stream.entries == [1])
    await asyncio.sleep(0.05)
    await run.stop()
    assert outbox.claims - before == 1, "one claim for one NOTIFY, whatever the concurrency"


async def test_a_burst_of_notifies_is_gathered_into_few_claims() -> None:
    outbox = Outbox()
    run = Running(outbox, None)
    await asyncio.sleep(0.02)
    before = outbox.claims
    for _ in range(200):  # 200 commits, 200 NOTIFYs, as fast as they come
        outbox.commit()
        run.forwarder.wake()
        await asyncio.sleep(0)
    await run.until(lambda: len(run.stream.entries) == 200)
    await run.stop()
    assert run.stream.entries == list(range(1, 201))
    assert outbox.claims - before < 50, "claims gathered rows, not one claim per NOTIFY"


async def test_a_relay_that_finds_nothing_says_waiting_then_looks_once_more() -> None:
    outbox = Outbox()
    # A producer that read "busy" (so sent no NOTIFY) commits just as the relay says waiting.
    flag = Flag(on_waiting=outbox.commit)
    run = Running(outbox, flag)
    await run.until(lambda: run.stream.entries == [1])  # no NOTIFY, poll interval an hour
    await run.stop()
    assert flag.calls[0] == "waiting"


async def test_while_producers_keep_waiting_refused_the_relay_keeps_claiming() -> None:
    outbox = Outbox()
    flag = Flag(refuse=5)  # a producer that read "busy" is still open, five times over
    run = Running(outbox, flag)
    await run.until(lambda: flag.calls.count("waiting") >= 2)
    outbox.commit()  # that producer commits; it sent no NOTIFY
    await run.until(lambda: run.stream.entries == [1])
    await run.until(lambda: flag.waiting_now)
    await run.stop()


async def test_a_steady_flow_turns_the_flag_busy_and_the_relay_gathers_without_notifies() -> None:
    outbox = Outbox()
    flag = Flag()
    run = Running(outbox, flag)
    await run.until(lambda: flag.waiting_now)

    def more() -> None:  # rows keep committing, each with its NOTIFY while the flag says so
        if len(run.stream.entries) + len(outbox.unpublished) < 100:
            outbox.commit()
            if flag.waiting_now:
                run.forwarder.wake()

    outbox.on_claim = more
    outbox.commit()
    run.forwarder.wake()
    await run.until(lambda: len(run.stream.entries) == 100)
    await run.until(lambda: flag.waiting_now)  # nothing more: waiting again
    await run.stop()
    assert "busy" in flag.calls, "producers were told to stop notifying during the flow"
    assert run.stream.entries == list(range(1, 101))


async def test_without_a_listen_connection_the_relay_polls_and_never_says_waiting() -> None:
    outbox = Outbox()
    flag = Flag()
    run = Running(outbox, flag, poll_interval=0.05)
    await run.until(lambda: flag.waiting_now)
    run.forwarder.listen(None)  # the LISTEN connection was lost
    flag.calls.clear()
    outbox.commit()  # no NOTIFY can arrive
    await run.until(lambda: run.stream.entries == [1])
    await asyncio.sleep(0.2)
    await run.stop()
    assert flag.calls == []
    assert outbox.rests > 0, "no transaction held open across the waits"


async def test_a_relay_without_notify_looks_again_soon_after_it_found_rows() -> None:
    outbox = Outbox()
    run = Running(outbox, None)  # --no-listen, or its LISTEN connection is down; poll: an hour
    await asyncio.sleep(0.02)
    outbox.commit()
    run.forwarder.wake()  # only to end the first hour-long wait
    await run.until(lambda: run.stream.entries == [1])
    await asyncio.sleep(0.1)
    outbox.commit()  # no NOTIFY, no wake
    await run.until(lambda: run.stream.entries == [1, 2])
    await run.stop()


async def test_a_busy_flag_whose_reply_was_lost_is_said_waiting_again_once_idle() -> None:
    outbox = Outbox()
    flag = Flag(lose=["busy"])  # the row says busy, the write raised
    run = Running(outbox, flag)
    await run.until(lambda: flag.waiting_now)

    def more() -> None:
        if len(run.stream.entries) + len(outbox.unpublished) < 50:
            outbox.commit()
            if flag.waiting_now:
                run.forwarder.wake()

    outbox.on_claim = more
    outbox.commit()
    run.forwarder.wake()
    await run.until(lambda: len(run.stream.entries) == 50)
    await run.until(lambda: flag.waiting_now)  # not deaf: producers notify again
    outbox.commit()
    run.forwarder.wake()
    await run.until(lambda: len(run.stream.entries) == 51)
    await run.stop()
    assert "busy" in flag.calls and not flag.lose


async def test_a_waiting_flag_whose_reply_was_lost_is_said_waiting_again() -> None:
    outbox = Outbox()
    flag = Flag(lose=["waiting"])  # the row says waiting, the write raised
    run = Running(outbox, flag)
    await run.until(lambda: flag.calls.count("waiting") >= 2)  # believed busy: said again
    outbox.commit()
    run.forwarder.wake()
    await run.until(lambda: run.stream.entries == [1])
    await run.stop()
