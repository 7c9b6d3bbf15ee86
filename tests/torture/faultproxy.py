"""A loopback TCP proxy that injects network faults (latency, resets, blackholes, half-open peers,
partitions) between a process and the server it talks to, switchable while traffic flows."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

Direction = Literal["to_server", "to_client", "both"]
_State = Literal["normal", "blackhole", "half_open", "partition"]
_T = TypeVar("_T")
_CHUNK = 65536
_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "postgresql": 5432, "postgres": 5432}
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and discards unsent data


@dataclass(frozen=True)
class Counters:
    """What the proxy has seen since it started (a snapshot)."""

    accepted: int = 0
    """Client connections accepted (refused ones included)."""
    open: int = 0
    """Client connections open now (held, half-open and forwarding ones)."""
    refused: int = 0
    """Connections reset right after accept because a partition was on."""
    resets: int = 0
    """Client connections the proxy ended with RST (faults, heals, a reset peer passed on)."""
    bytes_to_server: int = 0
    """Bytes written to the target."""
    bytes_to_client: int = 0
    """Bytes written to clients."""
    swallowed: int = 0
    """Bytes read from half-open clients and thrown away."""


class _Chunk(NamedTuple):
    due: float  # loop time before which the chunk may not be written; one writer per direction
    # takes chunks in order, so a chunk due earlier than the one before it just follows it
    data: bytes
    cut: bool  # the last bytes before a mid-command reset


@dataclass(eq=False)
class _Link:
    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    held: bool = False
    server_w: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    queues: dict[bool, asyncio.Queue[_Chunk | None]] = field(default_factory=dict)
    eofs: int = 0


def _rst(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    writer.transport.abort()


class FaultProxy:
    """Listens on 127.0.0.1:`port` (a free port) and forwards each connection to
    `target_host:target_port` over a fresh connection, from an event loop in its own daemon thread.

    Every control method may be called from any thread or event loop; it returns once the change
    is in effect. At most one of blackhole / half-open / partition is on at a time: switching to
    another first ends the current one as `heal(drop=True)` does. Latency combines with all of
    them; `reset()` works in any state. Starts on construction; `close()` (or leaving the `with`
    block) stops everything and joins the thread. `seed` seeds the jitter.

    The proxy's own sockets stay open through a blackhole or half-open, so the client's kernel
    still gets ACKs (and TCP keepalive probes are answered): only the client's own timeouts
    (socket, command, health check) can notice. A reset from either peer is passed on as a reset
    to the other; an orderly close (FIN) is passed on as one.
    """

    def __init__(self, target_host: str, target_port: int, *, seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self._rng = random.Random(seed)
        self._latency = {True: (0.0, 0.0), False: (0.0, 0.0)}  # to_server? -> (delay, jitter)
        self._state: _State = "normal"
        self._cut_after: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts: dict[str, int] = dict.fromkeys(Counters.__dataclass_fields__, 0)
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()  # cleared while a blackhole holds every byte
        self._flowing.set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._server = self._await(asyncio.start_server(self._accepted, "127.0.0.1", 0))
        except BaseException:
            self._stop_loop()
            raise
        self.port: int = self._server.sockets[0].getsockname()[1]

    @classmethod
    def for_url(cls, url: str, *, seed: int = 0) -> FaultProxy:
        """A proxy to the host and port of `url` (redis://…, postgresql://…)."""
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        return cls(parts.hostname or "127.0.0.1", port, seed=seed)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's (user, path and query kept)."""
        parts = urlsplit(url)
        user, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{user}{at}{self.address}"))

    # --- control (any thread) -------------------------------------------------------------

    def latency(self, seconds: float, jitter: float = 0.0, direction: Direction = "both") -> None:
        """Delay every chunk read in `direction` by `seconds` plus a uniform random [0, jitter]
        before writing it on; bytes of a connection keep their order (a chunk never overtakes an
        earlier one). Applies to chunks read from now on; `latency(0)` turns it off."""
        if seconds < 0 or jitter < 0:
            raise ValueError(f"latency and jitter must be >= 0, got {seconds} and {jitter}")
        sides = {"to_server": (True,), "to_client": (False,), "both": (True, False)}[direction]
        self._call(lambda: self._latency.update(dict.fromkeys(sides, (seconds, jitter))))

    def reset(self, after_bytes: int | None = None) -> None:
        """Without `after_bytes`: end every open connection now with RST on both sides (the
        client's next read or write fails with ECONNRESET; the server sees a reset too). New
        connections are served as before.

        With `after_bytes=N`: arm a one-shot mid-command cut. The next N bytes any client sends
        are forwarded; the chunk holding the N-th byte is cut right after it, and as soon as those
        bytes are written to the server every open connection is reset as above. The client's
        later bytes are never forwarded. `counters().resets` grows when it fires."""
        if after_bytes is not None and after_bytes < 0:
            raise ValueError(f"after_bytes must be >= 0, got {after_bytes}")
        if after_bytes is None:
            self._call(self._reset_all)
        else:
            self._call(self._arm, after_bytes)

    def blackhole(self, for_seconds: float | None = None) -> None:
        """Stop forwarding in both directions: nothing is read from, or written to, any socket
        (bytes already read wait in the proxy), so clients' writes land in kernel buffers and their
        reads wait until their own timeouts. New connections are accepted (the TCP handshake
        completes) but no server connection is made and nothing is ever answered; no FIN or RST
        goes anywhere. Lasts until `heal()`, or `for_seconds` then `heal(drop=True)`."""
        self._call(self._enter, "blackhole", for_seconds)

    def half_open(self, for_seconds: float | None = None) -> None:
        """The server vanishes without telling the clients: every open connection's server side is
        closed (FIN to the server, which forgets it) while the client's socket stays open; all
        the client writes is read and thrown away (writes succeed), nothing comes back, no FIN or
        RST. New connections meanwhile are accepted and treated the same (no server connection).
        `heal()` (or `for_seconds` later) ends them with RST, as the restarted peer would answer
        the next segment of a connection it does not know."""
        self._call(self._enter, "half_open", for_seconds)

    def partition(self, for_seconds: float | None = None) -> None:
        """Cut every open connection with RST, and reset each new one right after accepting it
        (the client's connect succeeds, its first read or write fails with ECONNRESET;
        `counters().refused` counts them). Lasts until `heal()`, or for `for_seconds`."""
        self._call(self._enter, "partition", for_seconds)

    def heal(self, drop: bool = True) -> None:
        """End the blackhole, half-open or partition that is on (no-op if none). After a
        blackhole, `drop=True` resets every connection it held (a real blackhole usually outlives
        the connections' timeouts), `drop=False` resumes them: held bytes are delivered in order
        and connections accepted during it get their server connection now. Half-open
        connections are always reset. Latency is left as it is; new connections work at once."""
        self._call(self._heal, drop)

    def counters(self) -> Counters:
        """A snapshot of the counters, with `open` as of now."""
        return self._call(lambda: Counters(**{**self._counts, "open": len(self._links)}))

    def close(self) -> None:
        """Reset every connection, stop listening, stop the loop and join its thread. Idempotent."""
        if self._closed:
            return
        try:
            self._await(self._shutdown())
        finally:
            self._closed = True
            self._stop_loop()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        async def run() -> _T:
            return fn(*args)

        return self._await(run())

    def _await(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread or self._closed:
            coro.close()
            raise RuntimeError("FaultProxy is closed, or called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    # --- loop thread ----------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._heal(drop=True)
        self._server.close()
        self._reset_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    def _spawn(self, link: _Link, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        for tasks in (link.tasks, self._tasks):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._counts["accepted"] += 1
        if self._state == "partition":
            self._counts["refused"] += 1
            _rst(writer)
            return
        link = _Link(reader, writer, held=self._state == "blackhole")
        self._links.add(link)
        if self._state == "half_open":
            self._spawn(link, self._swallow(link, set()))
        elif not link.held:
            self._spawn(link, self._connect(link))

    async def _connect(self, link: _Link) -> None:
        try:
            server_r, link.server_w = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=10
            )
        except (OSError, TimeoutError):
            self._abort(link)  # the target is down: the client sees a reset
            return
        for to_server, reader in ((True, link.client_r), (False, server_r)):
            link.queues[to_server] = asyncio.Queue()
            self._spawn(link, self._read(link, reader, to_server))
            self._spawn(link, self._write(link, to_server))

    async def _read(self, link: _Link, reader: asyncio.StreamReader, to_server: bool) -> None:
        queue = link.queues[to_server]
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    queue.put_nowait(None)
                    return
                cut = False
                if to_server and self._cut_after is not None:
                    if len(data) >= self._cut_after:
                        data, cut, self._cut_after = data[: self._cut_after], True, None
                    else:
                        self._cut_after -= len(data)
                queue.put_nowait(_Chunk(self._due(to_server), data, cut))
                if cut:
                    return
        except OSError:
            self._abort(link)  # a peer reset: pass the reset on to the other side

    def _due(self, to_server: bool) -> float:
        delay, jitter = self._latency[to_server]
        return self._loop.time() + delay + (self._rng.uniform(0, jitter) if jitter else 0.0)

    async def _write(self, link: _Link, to_server: bool) -> None:
        queue = link.queues[to_server]
        writer = link.server_w if to_server else link.client_w
        assert writer is not None
        counter = "bytes_to_server" if to_server else "bytes_to_client"
        try:
            while (chunk := await queue.get()) is not None:
                await asyncio.sleep(max(0.0, chunk.due - self._loop.time()))
                await self._flowing.wait()
                writer.write(chunk.data)
                await writer.drain()
                self._counts[counter] += len(chunk.data)
                if chunk.cut:
                    self._reset_all()
                    return
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            self._abort(link)
            return
        link.eofs += 1
        if link.eofs == 2 and link.server_w is not None:  # both sides said goodbye
            self._links.discard(link)
            link.client_w.close()
            link.server_w.close()

    async def _swallow(self, link: _Link, old: set[asyncio.Task[None]]) -> None:
        if old:  # the forwarding tasks must let go of the client's reader first
            await asyncio.wait(old)
        with contextlib.suppress(OSError):
            while data := await link.client_r.read(_CHUNK):
                self._counts["swallowed"] += len(data)
        self._links.discard(link)  # the client closed (or reset) its end
        link.client_w.close()

    def _abort(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self._counts["resets"] += 1
        for task in link.tasks:
            task.cancel()
        _rst(link.client_w)
        _rst(link.server_w)

    def _reset_all(self) -> None:
        for link in list(self._links):
            self._abort(link)

    def _arm(self, after_bytes: int) -> None:
        self._cut_after = after_bytes

    def _enter(self, state: _State, for_seconds: float | None) -> None:
        self._heal(drop=True)
        self._state = state
        if state == "blackhole":
            self._flowing.clear()
        elif state == "partition":
            self._reset_all()
        elif state == "half_open":
            for link in self._links:
                old = set(link.tasks)
                for task in old:
                    task.cancel()
                if link.server_w is not None:
                    link.server_w.close()
                    link.server_w = None
                self._spawn(link, self._swallow(link, old))
        if for_seconds is not None:
            self._timer = self._loop.call_later(for_seconds, self._heal, True)

    def _heal(self, drop: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        state, self._state = self._state, "normal"
        if state == "half_open" or (state == "blackhole" and drop):
            self._reset_all()
        elif state == "blackhole":
            for link in self._links:
                if link.held:
                    link.held = False
                    self._spawn(link, self._connect(link))
        self._flowing.set()
