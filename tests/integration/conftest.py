"""Fixtures for pipeline tests: one bundle of the per-test schema, key prefix and clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest


@dataclass(frozen=True)
class Case:
    """What one pipeline test works with: a migrated schema, a key prefix, open clients."""

    database_url: str
    redis_url: str
    schema: str
    prefix: str
    pg: asyncpg.Connection
    redis: Any

    @property
    def env(self) -> dict[str, str]:
        """Environment pointing a `conveyor` process at this case."""
        return {
            "CONVEYOR_DATABASE_URL": self.database_url,
            "CONVEYOR_REDIS_URL": self.redis_url,
            "CONVEYOR_KEY_PREFIX": self.prefix,
            "CONVEYOR_SCHEMA": self.schema,
            "CONVEYOR_LOG_LEVEL": "info",
        }

    def relay_settings(self, **overrides: Any) -> dict[str, Any]:
        """RelaySettings arguments for this case."""
        base = {"database_url": self.database_url, "redis_url": self.redis_url,
                "schemas": (self.schema,), "key_prefix": self.prefix}  # fmt: skip
        return base | overrides


@pytest.fixture
def case(
    database_url: str, redis_url: str, migrated_schema: str, key_prefix: str,
    pg: asyncpg.Connection, redis_client: Any,
) -> Case:  # fmt: skip
    return Case(database_url, redis_url, migrated_schema, key_prefix, pg, redis_client)
