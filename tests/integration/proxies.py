"""A loopback TCP proxy for outage tests: a dependency that goes away and comes back, or that
answers only the first connection, without touching the shared server behind it."""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    """Forwards connections to 127.0.0.1:`port`. `cut()` drops every connection and refuses new
    ones, as a server that went away would; `restore()` lets new ones through again. With
    `connections=N` it stops listening after its N-th connection: a start-up check gets through,
    everything after it finds the dependency gone; with `hold=True` as well, later connections are
    accepted and never answered (a server that stopped answering), and `held` is set."""

    def __init__(self, port: int, *, connections: int | None = None, hold: bool = False) -> None:
        self._target = port
        self._left = connections
        self._hold = hold
        self.held = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._socks: list[socket.socket] = []
        self._cut = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self._hold or self._left is None or self._left > 0:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            if self._left == 0:  # holding: accepted, never answered
                self._socks.append(client)
                self.held.set()
                continue
            if self._left is not None:
                self._left -= 1
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()
        self._listener.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self._cut = True
        socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def restore(self) -> None:
        self._cut = False

    def close(self) -> None:
        self.cut()
        self._listener.close()
