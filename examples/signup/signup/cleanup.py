"""`python -m signup clean`: remove what the Quick start left besides Conveyor's own tables.

The app's tables (signup.users, mailer.mail), the catalog rows of topic `signup` (its dead
letters, their reconcile cursors, the registry rows of the `mailer` group) and the Redis keys
of topic `signup` (`<key prefix>:{signup}:*`: its stream, dead letters and retries). Conveyor's
outbox and ledgers, and then the schemas, go with `conveyor migrate down base`. The audit log in
`conveyor.audit` is kept, as audit logs are.
"""

from __future__ import annotations

import os

import asyncpg

from conveyor import redis_client, wire

TOPIC = "signup"
GROUP = "mailer"
KEY_PREFIX = os.environ.get("CONVEYOR_KEY_PREFIX", wire.DEFAULT_PREFIX)
REDIS_URL = os.environ.get("CONVEYOR_REDIS_URL", "redis://127.0.0.1:6379/0")


async def clean(conn: asyncpg.Connection) -> str:
    """Drop the app's tables, forget the topic's catalog rows, delete its Redis keys."""
    await conn.execute("DROP TABLE IF EXISTS signup.users, mailer.mail")
    streams = f"{KEY_PREFIX}:{{{TOPIC}}}:%"
    rows = 0
    if await conn.fetchval("SELECT to_regclass('conveyor.dead_letters') IS NOT NULL"):
        for table in ("dead_letters", "dead_letter_cursors"):
            done = await conn.execute(
                f"DELETE FROM conveyor.{table} WHERE dlq_stream LIKE $1", streams
            )
            rows += int(done.split()[-1])
        done = await conn.execute(
            "DELETE FROM conveyor.consumers"
            " WHERE key_prefix = $1 AND consumer_group = $2 AND $3 = ANY(topics)",
            KEY_PREFIX,
            GROUP,
            TOPIC,
        )
        rows += int(done.split()[-1])
    keys = await _delete_keys(f"{KEY_PREFIX}:{{{TOPIC}}}:*")
    return (
        f"dropped signup.users and mailer.mail; deleted {rows} catalog rows and {keys} Redis keys"
        " of topic signup. Now `conveyor migrate down base --schema signup` (and mailer)"
    )


async def _delete_keys(pattern: str) -> int:
    client = redis_client.connect(REDIS_URL, socket_timeout=5.0)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=500)]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()
