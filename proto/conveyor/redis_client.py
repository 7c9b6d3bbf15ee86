"""How every Conveyor process connects to Redis: one client factory, tuned for pipelined streams."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
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


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that force a Redis Cluster client (the node named is where discovery starts)."""

_detected: dict[str, bool] = {}
"""URL -> whether `open` found a cluster there: later `connect` calls in this process (a
consumer's service, the ops plane) get the same kind of client without asking again."""


class ClusterUnavailable(redis_errors.ConnectionError):
    """The cluster client found no node to ask, or a slot no master serves (a failover under
    way): an outage like a refused connection, retried the same way."""


_UNCOVERED = ("Redis Cluster cannot be connected", "All slots are not covered")


def _outage(exc: BaseException) -> BaseException | None:
    """`exc` as the ConnectionError it stands for, when the cluster client raised it for want
    of a reachable node or a served slot (redis-py raises these outside RedisError)."""
    if isinstance(exc, redis_errors.SlotNotCoveredError) or (
        isinstance(exc, redis_errors.RedisClusterException) and str(exc).startswith(_UNCOVERED)
    ):
        return ClusterUnavailable(str(exc))
    return None


UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # ClusterUnavailable, MaxConnectionsError too
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN: a failover under way
    redis_errors.TryAgainError,  # TRYAGAIN: a slot migrating
    redis_errors.AskError,  # MOVED, ASK answered after the client's own retries
    OSError,
)
"""Redis errors that mean "not reachable now, try again", single server or cluster."""


def unavailable(exc: BaseException) -> bool:
    """`exc` says Redis (or a node of the cluster) is unreachable or failing over: retry."""
    return isinstance(exc, UNAVAILABLE) and not isinstance(
        exc, (redis_errors.AuthenticationError, redis_errors.AuthorizationError)
    )


class _ClusterPipeline(ClusterPipeline):
    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute(*args, **kwargs)
        except redis_errors.RedisClusterException as exc:
            raise (_outage(exc) or exc) from exc


class Cluster(RedisCluster):
    """redis-py's asyncio RedisCluster, whose "no node / slot not covered" errors are
    ConnectionErrors (ClusterUnavailable) like every other outage."""

    async def initialize(self, *args: Any, **kwargs: Any) -> Cluster:
        try:
            await super().initialize(*args, **kwargs)
        except redis_errors.RedisClusterException as exc:
            raise (_outage(exc) or exc) from exc
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except redis_errors.RedisClusterException as exc:
            raise (_outage(exc) or exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


def is_cluster(client: Any) -> bool:
    """Whether `client` speaks to a Redis Cluster (one client per cluster, many nodes)."""
    return isinstance(client, RedisCluster)


def cluster_forced(url: str) -> bool:
    """`url` names a cluster explicitly (redis+cluster://, rediss+cluster://)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def connect(
    url: str, *, timeout: float = COMMAND_TIMEOUT, cluster: bool | None = None, **options: Any
) -> Any:
    """A redis.asyncio client for `url` (redis://, rediss:// or unix://); a cluster client
    (`Cluster`) for redis+cluster:// and rediss+cluster://, when `cluster` is True, or when
    `open` found a cluster at `url` earlier in this process.

    Reads carry no per-reply socket timeout: a per-reply timer costs more than the reply itself
    in a 1,000-command pipeline, so callers bound whole round trips (`within`). TCP keepalive
    (conveyor.deadlines) lets the kernel end a connection whose peer vanished, with `timeout`
    as its TCP_USER_TIMEOUT.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme in CLUSTER_SCHEMES:
        url, scheme, cluster = (
            CLUSTER_SCHEMES[scheme] + url[len(scheme) :],
            CLUSTER_SCHEMES[scheme],
            True,
        )
    elif cluster is None:
        cluster = _detected.get(url, False)
    connection_class = {"rediss": _TlsConnection, "unix": _UnixConnection}.get(
        scheme, _TcpConnection
    )
    options.setdefault("socket_timeout", None)
    options.setdefault("socket_connect_timeout", min(5.0, timeout))
    if scheme != "unix":
        options.setdefault("socket_keepalive", True)
        options.setdefault("socket_keepalive_options", keepalive_options(timeout))
    if not cluster:
        return aioredis.from_url(url, connection_class=connection_class, **options)
    if scheme == "unix":
        raise ValueError(f"a Redis Cluster is reached over TCP, not a unix socket: {url}")
    client = Cluster.from_url(url, **options)
    # redis-py's cluster client builds plain Connections: give every node the hiredis packer.
    client.connection_kwargs["connection_class"] = connection_class
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = connection_class
    return client


async def detect(url: str, *, timeout: float = COMMAND_TIMEOUT) -> bool | None:  # noqa: ASYNC109
    """Whether the server at `url` runs in cluster mode (INFO cluster says cluster_enabled:1);
    None when it did not answer. Remembered for `connect`."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return True
    if scheme == "unix":
        return False
    probe = connect(url, timeout=timeout, cluster=False)
    try:
        async with asyncio.timeout(timeout):
            info = await probe.info("cluster")
    except (redis_errors.RedisError, OSError, TimeoutError):
        return _detected.get(url)
    finally:
        await probe.aclose()
    found = _detected[url] = str(info.get("cluster_enabled", 0)) == "1"
    return found


async def open(url: str, *, timeout: float = COMMAND_TIMEOUT, **options: Any) -> Any:  # noqa: ASYNC109
    """`connect(url)`, after asking the server whether it is a cluster node (`detect`): the
    client every process starts with. A server that does not answer gets the single-server
    client (or what an earlier look found); redis+cluster:// skips the question."""
    await detect(url, timeout=timeout)
    return connect(url, timeout=timeout, **options)


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
