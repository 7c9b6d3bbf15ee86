"""Pipelined XADDs to a Redis Cluster: each batch split by the master serving each stream's slot,
each part sent as one write on a connection of that master (with its WAIT, when asked)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from conveyor import redis_client
from relay.errors import NotReplicated

log = logging.getLogger(__name__)

_TOPOLOGY = (AskError, TryAgainError, ClusterDownError)
"""Error replies saying the slot map changed or is changing (MOVED is an AskError)."""
_XADD_KEY = b"XADD\r\n$"


def key_of(packed: bytes) -> bytes:
    """The key of one packed `XADD key ...` command (RESP: `*n $4 XADD $len key ...`)."""
    start = packed.index(_XADD_KEY) + len(_XADD_KEY)
    end = packed.index(b"\r\n", start)
    begin = end + 2
    return packed[begin : begin + int(packed[start:end])]


def owner(client: Any, key: str | bytes) -> Any:
    """The ClusterNode serving `key`'s slot, as the client's slot map says."""
    raw = key.encode() if isinstance(key, str) else key
    return client.nodes_manager.get_node_from_slot(key_slot(raw))


class ClusterSender:
    """Sends a batch's packed XADDs to the masters of their slots; the replies' errors come
    back by command index, as the single-server path returns them."""

    def __init__(self, client: Any, wait: bytes | None, replicas: int, wait_seconds: float) -> None:
        self._client = client
        self._wait = wait
        self._replicas = replicas
        self._wait_seconds = wait_seconds

    async def send(self, commands: Sequence[bytes]) -> dict[int, ResponseError]:
        client = self._client
        await client.initialize()  # a no-op once the slot map is loaded
        try:
            parts = self._split(commands)
            results = await asyncio.gather(
                *(self._send_part(node, commands, idx) for node, idx in parts.items()),
                return_exceptions=True,
            )
        except (*_TOPOLOGY, ConnectionError, TimeoutError, OSError) as exc:
            await self._refresh(exc)
            raise
        failed: dict[int, ResponseError] = {}
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._refresh(errors[0])
            raise errors[0]
        for part in results:
            assert isinstance(part, dict)
            failed.update(part)
        moved = [e for e in failed.values() if isinstance(e, _TOPOLOGY)]
        if moved:
            # A slot moved (MOVED, ASK), or is moving: the whole batch again, on the new map;
            # entries appended meanwhile come twice, consumers' ledgers absorb them.
            await self._refresh(moved[0])
            first = moved[0]
            raise redis_client.ClusterUnavailable(
                f"cluster slot map changed ({type(first).__name__} {first}): batch retried"
            )
        return failed

    def _split(self, commands: Sequence[bytes]) -> dict[Any, list[int]]:
        nodes: dict[bytes, Any] = {}
        parts: dict[Any, list[int]] = {}
        for i, packed in enumerate(commands):
            key = key_of(packed)
            node = nodes.get(key)
            if node is None:
                node = nodes[key] = owner(self._client, key)
            parts.setdefault(node, []).append(i)
        return parts

    async def _send_part(
        self, node: Any, commands: Sequence[bytes], indexes: list[int]
    ) -> dict[int, ResponseError]:
        packed = b"".join(commands[i] for i in indexes)
        if self._wait is not None:
            packed += self._wait
        failed: dict[int, ResponseError] = {}
        conn = node.acquire_connection()
        try:
            # As on one server: a failure or cancellation mid-way disconnects the connection.
            await conn.send_packed_command(packed, check_health=False)
            for i in indexes:
                try:
                    await conn.read_response(disable_decoding=True)
                except ResponseError as exc:
                    failed[i] = exc
            if self._wait is not None:
                acked = int(await conn.read_response())
                if acked < self._replicas:
                    raise NotReplicated(
                        node=node.name,
                        wanted=self._replicas,
                        acknowledged=acked,
                        seconds=self._wait_seconds,
                    )
        finally:
            node.release(conn)
        return failed

    async def _refresh(self, exc: BaseException) -> None:
        """Reload the slot map after `exc` (a dead node, a moved slot); the batch is retried."""
        if isinstance(exc, NotReplicated):
            return
        log.debug("reloading the cluster slot map after %r", exc)
        try:
            await self._client.nodes_manager.initialize()
        except Exception as again:  # noqa: BLE001 - the retry reloads it again
            log.debug("reloading the cluster slot map failed: %r", again)
