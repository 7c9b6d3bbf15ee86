"""What the tests of the relay's Redis reset check share: numbered outbox rows, and the check
repeated as the relay's monitor repeats it while Redis does not answer."""

from __future__ import annotations

import asyncio
import uuid

import redis

from relay.publisher import ResetReport, StreamPublisher
from relay.store import Row


def rows(start: int, n: int, topic: str) -> list[Row]:
    """Outbox rows start..start+n-1 of `topic`, event id = the row id as a UUID."""
    return [
        (i, uuid.UUID(int=i), topic, "t.v1.T", f"agg{i}", None, b"payload")
        for i in range(start, start + n)
    ]


async def check_until_answered(publisher: StreamPublisher) -> ResetReport | None:
    """The reset check, again every 0.1 s while Redis does not answer (up to 10 s)."""
    for _ in range(100):
        try:
            return await publisher.check_reset()
        except (redis.RedisError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("the reset check got no answer within 10 s")
