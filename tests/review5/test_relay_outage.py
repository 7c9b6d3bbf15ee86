"""What a running relay logs while PostgreSQL is away."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading

from sqlalchemy.engine import make_url

from tests.integration.conftest import Case
from tests.processes import start_conveyor, stop


class CuttableProxy:
    """A loopback TCP proxy to `port`; `cut()` drops every connection and refuses new ones,
    as a PostgreSQL that went away would."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._socks: list[socket.socket] = []
        self._cut = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self._cut = True
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.cut()
        self._listener.close()


# docs/operations.md: "Once running, outages are waited out without limit: the relay logs one
# line when a dependency stops answering, one every 30 s while it stays away, and one when it is
# back". For PostgreSQL the relay also logs "cannot LISTEN for outbox notifications" and the ops
# plane "cannot read the consumer registry" every second (neither with the address), and asyncpg's
# pool prints whole tracebacks ("Failed to restore the pool connection floor"). This is the flood
# the rate-limited outage line was meant to end; an operator's log of a 10-minute database
# failover is thousands of lines. Expected: no traceback, and those per-second lines at most once
# each (the outage line says it all).
async def test_a_postgres_outage_is_logged_once_without_tracebacks(case: Case) -> None:
    proxy = CuttableProxy(make_url(case.database_url).port or 5432)
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    args = ["relay", "--schema", case.schema, "--grpc-addr", "127.0.0.1:0"]
    proc = start_conveyor(
        [*args, "--allow-unauthenticated"], case.env | {"CONVEYOR_DATABASE_URL": url}
    )
    shown = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            shown += line
            if "relay started" in line:
                break
        proxy.cut()
        await asyncio.sleep(10)  # an outage of 10 s: one line when it begins, per the docs
    finally:
        shown += stop(proc)
        proxy.close()
    assert "relay started" in shown, shown
    assert "Traceback" not in shown, shown
    for repeated in ("cannot LISTEN for outbox notifications", "cannot read the consumer registry"):
        count = len(re.findall(repeated, shown))
        assert count <= 1, f"{repeated!r} logged {count} times in a 10 s outage:\n{shown}"
