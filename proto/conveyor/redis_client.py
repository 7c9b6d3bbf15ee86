"""How every Conveyor process connects to Redis: one client factory, tuned for pipelined streams."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from conveyor.deadlines import DEPENDENCY_TIMEOUT, NoReply, keepalive_options

COMMAND_TIMEOUT = DEPENDENCY_TIMEOUT
"""Seconds a whole pipeline or command may take by default; callers bound each round trip with
it, or with the process's dependency timeout (`within`)."""

T = TypeVar("T")


class _HiredisPacking:
    """Packs commands with hiredis' C encoder, as redis-py's synchronous client already does.

    redis-py's asyncio connection packs in Python, which costs the relay about 40 % of its CPU
    at 1,000 XADDs per pipeline.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (isinstance(first, str) and " " in first) or (
            isinstance(first, bytes) and b" " in first
        ):
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


class _TcpConnection(_HiredisPacking, Connection):
    pass


class _TlsConnection(_HiredisPacking, SSLConnection):
    pass


class _UnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


def connect(url: str, *, timeout: float = COMMAND_TIMEOUT, **options: Any) -> aioredis.Redis:
    """A redis.asyncio client for `url` (redis://, rediss:// or unix://).

    Reads carry no per-reply socket timeout: a per-reply timer costs more than the reply itself
    in a 1,000-command pipeline, so callers bound whole round trips (`within`). TCP keepalive
    (conveyor.deadlines) lets the kernel end a connection whose peer vanished, with `timeout`
    as its TCP_USER_TIMEOUT.
    """
    scheme = url.split("://", 1)[0].lower()
    connection_class = {"rediss": _TlsConnection, "unix": _UnixConnection}.get(
        scheme, _TcpConnection
    )
    options.setdefault("socket_timeout", None)
    options.setdefault("socket_connect_timeout", min(5.0, timeout))
    if scheme != "unix":
        options.setdefault("socket_keepalive", True)
        options.setdefault("socket_keepalive_options", keepalive_options(timeout))
    return aioredis.from_url(url, connection_class=connection_class, **options)


async def within(seconds: float, call: Awaitable[T], what: str = "") -> T:
    """The reply to `call` (a command or a pipeline's execute), or NoReply when Redis has not
    answered within `seconds`. The connection the command went out on is then closed (redis-py
    drops a connection whose read was cut short), so no late reply is read as another's."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError as exc:
        if isinstance(exc, NoReply):
            raise
        raise NoReply("redis", seconds, what) from exc
