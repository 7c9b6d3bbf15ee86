"""The fault proxy's faults, as a client sees them, against a loopback echo server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.torture.faultproxy import FaultProxy

SILENCE = 0.3
"""How long a read must stay unanswered to count as silent."""


@dataclass
class Echo:
    """A loopback server that echoes each connection; `ended` holds, per finished connection,
    what it received and how it ended (`EOF` or `RST`)."""

    port: int = 0
    connections: int = 0
    ended: list[tuple[bytes, str]] = field(default_factory=list)
    handlers: set[asyncio.Task[object]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        got, how = b"", "EOF"
        try:
            while data := await reader.read(65536):
                got += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            how = "RST"
        self.ended.append((got, how))
        writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    echo = Echo()
    server = await asyncio.start_server(echo.serve, "127.0.0.1", 0)
    echo.port = server.sockets[0].getsockname()[1]
    async with server:
        yield echo
        pending = {task for task in echo.handlers if not task.done()}
        if pending:  # the proxy is closed by now: its reset ends every connection
            await asyncio.wait(pending, timeout=5)


@pytest.fixture
def proxy(echo: Echo) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port, seed=7) as proxy:
        yield proxy


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(proxy: FaultProxy) -> Conn:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def exchange(conn: Conn, data: bytes) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout=5)


async def roundtrip(proxy: FaultProxy, data: bytes = b"ping") -> bytes:
    conn = await connect(proxy)
    try:
        return await exchange(conn, data)
    finally:
        conn[1].close()


async def until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def assert_reset(reader: asyncio.StreamReader) -> None:
    """The connection ends with a reset (bytes that arrived before it may be read first), not
    with an orderly end of stream."""
    with pytest.raises(ConnectionResetError):
        while await asyncio.wait_for(reader.read(65536), timeout=5):
            pass
        pytest.fail("the connection ended with EOF, not a reset")


async def assert_refused(proxy: FaultProxy) -> None:
    """A new connection is reset at once (during the handshake, or right after it)."""
    try:
        reader, _ = await connect(proxy)
    except ConnectionResetError:
        return
    await assert_reset(reader)


async def assert_silent(reader: asyncio.StreamReader) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), timeout=SILENCE)
    assert not reader.at_eof()


async def test_forwards_both_ways_and_counts(proxy: FaultProxy, echo: Echo) -> None:
    reader, writer = await connect(proxy)
    assert await exchange((reader, writer), b"hello") == b"hello"
    assert await exchange((reader, writer), b"x" * 200_000) == b"x" * 200_000
    writer.write_eof()  # the half-close travels through, and the server's close comes back
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    await until(lambda: proxy.counters().open == 0, "the connection to close")
    counters = proxy.counters()
    assert (counters.accepted, counters.resets) == (1, 0)
    assert counters.bytes_to_server == counters.bytes_to_client == 200_005
    assert echo.ended == [(b"hello" + b"x" * 200_000, "EOF")]


async def test_latency_delays_each_direction_and_keeps_order(proxy: FaultProxy) -> None:
    proxy.latency(0.1, jitter=0.05)  # jitter far above the gap between chunks below
    reader, writer = await connect(proxy)
    started = time.monotonic()
    chunks = [f"{i:03d};".encode() for i in range(30)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.002)
    received = await asyncio.wait_for(reader.readexactly(len(b"".join(chunks))), timeout=5)
    assert time.monotonic() - started >= 0.2  # 0.1 s there and 0.1 s back, at least
    assert received == b"".join(chunks)
    proxy.latency(0)
    writer.close()


async def test_latency_one_direction(proxy: FaultProxy) -> None:
    proxy.latency(0.25, direction="to_client")
    started = time.monotonic()
    assert await roundtrip(proxy) == b"ping"
    assert time.monotonic() - started >= 0.25


async def test_reset_ends_open_connections_and_new_ones_work(proxy: FaultProxy, echo: Echo) -> None:
    conns = [await connect(proxy) for _ in range(3)]
    for conn in conns:
        await exchange(conn, b"before")
    proxy.reset()
    for reader, _ in conns:
        await assert_reset(reader)
    await until(lambda: len(echo.ended) == 3, "the server to see the resets")
    assert echo.ended == [(b"before", "RST")] * 3
    assert await roundtrip(proxy, b"after") == b"after"
    assert proxy.counters().resets == 3


async def test_reset_after_bytes_cuts_the_next_command(proxy: FaultProxy, echo: Echo) -> None:
    reader, writer = await connect(proxy)
    assert await exchange((reader, writer), b"SET a 1\n") == b"SET a 1\n"
    proxy.reset(after_bytes=10)
    writer.write(b"SET b 2\n")  # 8 bytes: forwarded whole, 2 left before the cut
    writer.write(b"SET c 3\n")
    await writer.drain()
    await assert_reset(reader)
    await until(lambda: echo.ended, "the server to see the reset")
    assert echo.ended == [(b"SET a 1\nSET b 2\nSE", "RST")]
    assert await roundtrip(proxy, b"SET d 4\n") == b"SET d 4\n"  # one-shot


async def test_blackhole_is_silent_and_heal_drops_held_connections(
    proxy: FaultProxy, echo: Echo
) -> None:
    held = await connect(proxy)
    await exchange(held, b"before")
    proxy.blackhole()
    held[1].write(b"lost")
    await assert_silent(held[0])
    late = await connect(proxy)  # accepted, never answered, never reaches the server
    late[1].write(b"lost too")
    await assert_silent(late[0])
    assert echo.connections == 1
    assert proxy.counters().open == 2
    proxy.heal()  # drop=True: both held connections are reset
    await assert_reset(held[0])
    await assert_reset(late[0])
    assert await roundtrip(proxy, b"again") == b"again"
    await until(lambda: len(echo.ended) == 2, "the server to see both connections end")
    assert (b"before", "RST") in echo.ended  # the held bytes never arrived


async def test_blackhole_heal_without_drop_resumes(proxy: FaultProxy) -> None:
    held = await connect(proxy)
    await exchange(held, b"before")
    proxy.blackhole()
    held[1].write(b"kept")
    late = await connect(proxy)
    late[1].write(b"late")
    await assert_silent(held[0])
    proxy.heal(drop=False)
    assert await asyncio.wait_for(held[0].readexactly(4), timeout=5) == b"kept"
    assert await asyncio.wait_for(late[0].readexactly(4), timeout=5) == b"late"
    for _, writer in (held, late):
        writer.close()


async def test_blackhole_for_seconds_heals_itself(proxy: FaultProxy) -> None:
    proxy.blackhole(for_seconds=0.2)
    conn = await connect(proxy)
    conn[1].write(b"x")
    await assert_reset(conn[0])
    assert await roundtrip(proxy) == b"ping"


async def test_half_open_swallows_writes_and_never_answers(proxy: FaultProxy, echo: Echo) -> None:
    reader, writer = await connect(proxy)
    await exchange((reader, writer), b"before")
    proxy.half_open()
    await until(lambda: echo.ended == [(b"before", "EOF")], "the server side to be closed")
    for _ in range(20):  # far more than socket buffers hold: writes keep succeeding
        writer.write(b"y" * 100_000)
        await asyncio.wait_for(writer.drain(), timeout=5)
    await assert_silent(reader)
    late = await connect(proxy)
    late[1].write(b"z")
    await assert_silent(late[0])
    assert echo.connections == 1
    await until(lambda: proxy.counters().swallowed == 2_000_001, "every byte to be swallowed")
    proxy.heal()
    await assert_reset(reader)
    await assert_reset(late[0])
    assert await roundtrip(proxy) == b"ping"


async def test_partition_cuts_refuses_then_heals(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    await exchange((reader, writer), b"before")
    proxy.partition()
    await assert_reset(reader)
    await assert_refused(proxy)
    assert proxy.counters().refused == 1
    proxy.heal()
    assert await roundtrip(proxy) == b"ping"


async def test_partition_for_seconds_heals_itself(proxy: FaultProxy) -> None:
    proxy.partition(for_seconds=0.3)
    await assert_refused(proxy)
    deadline = time.monotonic() + 5
    while True:  # no reset once the partition has healed by itself
        try:
            assert await roundtrip(proxy) == b"ping"
            break
        except (ConnectionResetError, asyncio.IncompleteReadError):
            assert time.monotonic() < deadline, "the partition did not heal"
            await asyncio.sleep(0.05)


async def test_a_target_that_is_down_resets_the_client() -> None:
    with FaultProxy("127.0.0.1", 1) as proxy:
        await assert_refused(proxy)


def test_close_stops_the_thread_and_later_calls_fail() -> None:
    before = threading.active_count()
    proxy = FaultProxy.for_url("postgresql://postgres@127.0.0.1:5432/postgres?x=1")
    assert proxy.url("postgresql://postgres@127.0.0.1:5432/db?x=1") == (
        f"postgresql://postgres@127.0.0.1:{proxy.port}/db?x=1"
    )
    assert proxy.url("redis://127.0.0.1:6379/0") == f"redis://127.0.0.1:{proxy.port}/0"
    assert threading.active_count() == before + 1
    proxy.close()
    proxy.close()
    assert threading.active_count() == before
    with pytest.raises(RuntimeError):
        proxy.reset()


async def test_orderly_closes_leave_no_connection_open(proxy: FaultProxy, echo: Echo) -> None:
    for _ in range(5):
        assert await roundtrip(proxy) == b"ping"
    await until(lambda: proxy.counters().open == 0, "every connection to close")
    await until(lambda: len(echo.ended) == 5, "the server to see every connection end")
    assert echo.ended == [(b"ping", "EOF")] * 5
