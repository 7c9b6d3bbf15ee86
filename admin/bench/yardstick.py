"""The yardstick every `conveyor bench` figure is a ratio to: ideal_pipeline.py beside this
module, a verbatim copy of the leanest honest asyncpg + redis-py outbox -> stream -> ledger loops,
run in a process of its own on the same services in the same run.

It works in schema `yard` and stream `yard.events`, which it drops and recreates each run: two
yardsticks at once on one database would break each other, so runs on one machine take turns
(a lock file in the temporary directory); benches on several machines against one database
must not run at the same time."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import sys
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).with_name("ideal_pipeline.py")

CONSUMER_FORMS = {
    "per-event": ("--handler-insert", "--conns", "2"),
    "batch": (),
    "at-least-once": ("--bare",),
}
"""The yardstick's consumer loop each Conveyor consumer form is compared with."""


LOCK = Path(tempfile.gettempdir()) / "conveyor-bench-yardstick.lock"


async def run(database_url: str, redis_url: str, *args: str) -> str:
    """The yardstick's output for `args`; RuntimeError with its stderr when it fails."""
    with LOCK.open("a") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            return await _run(database_url, redis_url, *args)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def _run(database_url: str, redis_url: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        env={**os.environ, "PG_DSN": database_url, "REDIS_URL": redis_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the yardstick failed (exit {proc.returncode}): {err.decode()[-2000:]}")
    return out.decode()


def _rate(out: str, pattern: str) -> float:
    m = re.search(rf"^{pattern} (\d+)", out, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"the yardstick printed no {pattern} line: {out[-500:]}")
    return float(m[1])


async def relay_rate(database_url: str, redis_url: str, events: int, batch: int) -> float:
    """Events/s of the yardstick's relay loop, keeping rows as `conveyor relay` does."""
    out = await run(
        database_url, redis_url, "--events", str(events), "--batch", str(batch), "--mode", "update"
    )
    return _rate(out, r"relay_eps\[update\]")


async def consumer_rate(
    database_url: str, redis_url: str, form: str, events: int, batch: int
) -> float:
    """Events/s of the yardstick's consumer loop for Conveyor's consumer `form`."""
    out = await run(
        database_url,
        redis_url,
        "--events",
        str(events),
        "--batch",
        str(batch),
        *CONSUMER_FORMS[form],
    )
    return _rate(out, r"consumer_eps\[[^\]]+\]")


async def both_rates(
    database_url: str, redis_url: str, events: int, batch: int
) -> tuple[float, float]:
    """Events/s of the yardstick's relay loop (update mode) and of its per-event consumer loop
    (`--handler-insert --conns 2`), from one run of both."""
    out = await run(
        database_url,
        redis_url,
        "--events",
        str(events),
        "--batch",
        str(batch),
        "--mode",
        "update",
        *CONSUMER_FORMS["per-event"],
    )
    return _rate(out, r"relay_eps\[update\]"), _rate(out, r"consumer_eps\[[^\]]+\]")
