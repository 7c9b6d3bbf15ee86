"""The consumer registry in the catalog: who consumes what, and whether it is still alive."""

from __future__ import annotations

import os
import socket

import asyncpg

from consumers.settings import ConsumerSettings
from conveyor import database

_TABLE = f"{database.CATALOG_SCHEMA}.{database.CONSUMERS_TABLE}"


class Registry:
    """Registers this consumer at start, heartbeats while it runs, removes it on a clean stop."""

    def __init__(self, pool: asyncpg.Pool, settings: ConsumerSettings) -> None:
        self._pool = pool
        self._s = settings

    async def register(self, grpc_addr: str | None = None) -> None:
        s = self._s
        await self._pool.execute(
            f"INSERT INTO {_TABLE} (consumer_group, consumer_name, topics, mode, ledger_schema, "
            "host, pid, grpc_addr, key_prefix) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (key_prefix, consumer_group, consumer_name) "
            "DO UPDATE SET topics = EXCLUDED.topics, "
            "mode = EXCLUDED.mode, ledger_schema = EXCLUDED.ledger_schema, host = EXCLUDED.host, "
            "pid = EXCLUDED.pid, grpc_addr = EXCLUDED.grpc_addr, started_at = now(), "
            "heartbeat_at = now()",
            s.group,
            s.consumer,
            list(s.topics),
            s.mode,
            s.ledger_schema if s.exactly_once else None,
            socket.gethostname(),
            os.getpid(),
            grpc_addr,
            s.key_prefix,
        )

    async def heartbeat(self) -> None:
        await self._pool.execute(
            f"UPDATE {_TABLE} SET heartbeat_at = now() "
            "WHERE consumer_group = $1 AND consumer_name = $2 AND key_prefix = $3",
            self._s.group,
            self._s.consumer,
            self._s.key_prefix,
        )

    async def unregister(self) -> None:
        await self._pool.execute(
            f"DELETE FROM {_TABLE} WHERE consumer_group = $1 AND consumer_name = $2 "
            "AND key_prefix = $3",
            self._s.group,
            self._s.consumer,
            self._s.key_prefix,
        )
