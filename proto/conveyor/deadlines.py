"""How long a Conveyor process waits for PostgreSQL and Redis: the dependency timeout that bounds
its own round trips, and the TCP keepalive that lets the kernel notice a peer that vanished.

A server that stopped answering without closing its connections (a host gone, a network path that
drops packets, a proxy that holds them) leaves a client waiting for a reply: only a timeout of the
client's own notices. Conveyor bounds every round trip it makes itself (a claim, the XADDs of a
batch, a ledger claim, a COMMIT, an XACK, a registry heartbeat) by the dependency timeout, closes
the connection it was made on (a late reply must never be read as the answer to a later
command) and reports the dependency unreachable. A handler's own statements are not bounded: they
may legitimately take long. TCP keepalive and TCP_USER_TIMEOUT on each connection let the kernel
end connections to a host that no longer acknowledges anything, also under a handler.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from conveyor.outages import unreachable

DEPENDENCY_TIMEOUT = 30.0
"""Seconds a round trip of Conveyor's own to PostgreSQL or Redis may take by default."""

KEEPALIVE_IDLE = 10
"""Seconds a connection is idle before the kernel probes its peer."""
KEEPALIVE_INTERVAL = 5
"""Seconds between probes the peer leaves unanswered."""
KEEPALIVE_PROBES = 3
"""Unanswered probes after which the kernel closes the connection."""


class NoReply(TimeoutError):
    """`dependency` (`postgres`, `redis`) did not answer within `seconds`."""

    def __init__(self, dependency: str, seconds: float, what: str = "") -> None:
        doing = f" to {what}" if what else ""
        super().__init__(f"{dependency} sent no reply{doing} within {seconds:g}s")
        self.dependency = dependency
        self.seconds = seconds


def unanswered(exc: BaseException) -> bool:
    """`exc`, raised by a PostgreSQL round trip of Conveyor's own, says PostgreSQL is away: it
    could not be reached, dropped the connection, or sent no reply within the timeout (only
    for round trips to PostgreSQL alone: a TimeoutError of a step that also talks to Redis may
    be Redis's)."""
    return isinstance(exc, TimeoutError) or unreachable(exc)


def keepalive_options(user_timeout: float) -> dict[int, int]:
    """Options of level IPPROTO_TCP for a socket with SO_KEEPALIVE on: probe after
    KEEPALIVE_IDLE seconds idle, every KEEPALIVE_INTERVAL, give up after KEEPALIVE_PROBES; and
    TCP_USER_TIMEOUT, so data left unacknowledged for `user_timeout` seconds ends the connection
    too. Those the platform lacks are left out."""
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": KEEPALIVE_PROBES,
        "TCP_USER_TIMEOUT": max(int(user_timeout * 1000), 1),
    }
    return {getattr(socket, n): v for n, v in wanted.items() if hasattr(socket, n)}


def keep_alive(sock: Any, user_timeout: float) -> None:
    """Turn TCP keepalive on for `sock` (a socket, or asyncio's wrapper of one) with
    `keepalive_options`; nothing for a Unix socket or None."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in keepalive_options(user_timeout).items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def postgres_keepalive(user_timeout: float) -> Any:
    """An `init` for asyncpg's pools (and a call after `asyncpg.connect`): keepalive on the
    connection's socket. asyncpg has no option for it, so the socket is taken from the
    connection's transport; a connection without one is left as it is."""

    async def init(connection: Any) -> None:
        transport = getattr(connection, "_transport", None)
        if transport is not None:
            keep_alive(transport.get_extra_info("socket"), user_timeout)

    return init


def pool_options(timeout: float, *, statements: bool = True) -> dict[str, Any]:
    """Options of `asyncpg.create_pool` for a pool of Conveyor's: connecting bounded by
    `timeout`, TCP keepalive on every connection, and with `statements` every statement bounded
    by `timeout` too (asyncpg's command_timeout, which also bounds the cancel it sends for a
    statement that timed out, after which it closes the connection). Without: a pool whose
    connections run handlers' statements, which Conveyor does not bound."""
    options: dict[str, Any] = {"timeout": timeout, "init": postgres_keepalive(timeout)}
    if statements:
        options["command_timeout"] = timeout
    return options
