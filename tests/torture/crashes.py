"""What the server-crash scenarios (test_server_crashes.py) share: the operator's commands run as
a user runs them, a burst of producers, and a model of a host crash under `appendfsync everysec`.

    env = conveyor_env(deployment)                     # CONVEYOR_DATABASE_URL, _REDIS_URL, ...
    result = await verify(deployment)                  # `conveyor verify --json`: VerifyResult
    published = await replay(deployment, since)        # `conveyor relay replay --since ISO`
    burst = start_burst(deployment, seed)              # producers as fast as they can go
    sampler = AofSampler(redis); sampler.start()       # sizes of the AOF's open file over time
    redis.kill(); sampler.truncate(seconds_before=1)   # the disk keeps what it had 1 s ago

A host crash (power loss, kernel panic) under `appendfsync everysec` keeps of the AOF what was
fsynced: Redis fsyncs about once a second, so the file as it was about a second before the crash.
Killing the process cannot show that (the kernel still writes out its page cache), so the model
truncates the AOF's open incremental file to the size it had `seconds_before` the kill: a prefix
of Redis's command log, which Redis loads as the state of that moment (`aof-load-truncated`, its
default, drops a command cut in half; an unfinished MULTI is dropped whole).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from admin.cli.verify import MAX_EXAMPLES
from tests.processes import run_conveyor
from tests.servers import RedisServer
from tests.torture.deployment import Deployment
from tests.torture.workload import Journal, Workload, WorkloadConfig


def conveyor_env(deployment: Deployment) -> dict[str, str]:
    """The environment an operator of the deployment runs `conveyor` commands with."""
    return {
        "CONVEYOR_DATABASE_URL": deployment.database_url,
        "CONVEYOR_REDIS_URL": deployment.redis_url,
        "CONVEYOR_KEY_PREFIX": deployment.key_prefix,
    }


@dataclass
class VerifyResult:
    """`conveyor verify --json`'s exit code and, per verified group, the lost events."""

    code: int
    output: str
    lost: dict[str, set[str]] = field(default_factory=dict)
    """Verified group -> ids of the events it lost (at most MAX_EXAMPLES, `--examples`' cap)."""
    total: dict[str, int] = field(default_factory=dict)
    """Verified group -> how many events it lost (more than `lost` holds after a big loss)."""
    details: dict[str, dict[str, int]] = field(default_factory=dict)
    """Verified group -> lost events by detail (`deleted`, `stream-reset`, ...)."""

    def summary(self) -> str:
        counts = dict(sorted(self.total.items()))
        return f"exit {self.code}; lost per group {counts}; details {self.details}"


async def verify(deployment: Deployment, since: str = "1h") -> VerifyResult:
    """`conveyor verify --since SINCE --schema S --json --examples N` (N: the most it takes), as
    a script runs it."""
    args = ["verify", "--since", since, "--schema", deployment.schema, "--json"]
    args += ["--examples", str(MAX_EXAMPLES)]
    done = await asyncio.to_thread(run_conveyor, args, conveyor_env(deployment), 120)
    result = VerifyResult(done.returncode, done.stdout + done.stderr)
    if done.returncode not in (0, 1):
        return result
    data: dict[str, Any] = json.loads(done.stdout)
    for g in data["groups"]:
        if g["verified"]:
            result.lost[g["group"]] = set(g["examples"].get("lost", []))
            lost = g["counts"]["lost"]
            result.details[g["group"]] = {k: v for k, v in lost.items() if k != "total"}
            result.total[g["group"]] = lost["total"]
            shown = len(result.lost[g["group"]])
            assert shown == min(lost["total"], MAX_EXAMPLES), f"{shown} of {lost['total']} lost"
    return result


async def replay(deployment: Deployment, since: datetime) -> dict[str, Any]:
    """`conveyor relay replay --schema S --since ISO --json`; its summary (AssertionError with
    the output unless it exits 0)."""
    args = ["relay", "replay", "--schema", deployment.schema, "--since", since.isoformat()]
    done = await asyncio.to_thread(run_conveyor, [*args, "--json"], conveyor_env(deployment), 120)
    assert done.returncode == 0, f"replay exited {done.returncode}: {done.stdout}{done.stderr}"
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def start_burst(deployment: Deployment, seed: int, producers: int = 3) -> Workload:
    """Producers committing as fast as they can (their own seeded sequence: `seed` + 1)."""
    config = WorkloadConfig(
        deployment.database_url, deployment.schema, seed=seed + 1, producers=producers, rate=None
    )
    burst = Workload(config)
    burst.start()
    return burst


def merged(*journals: Journal) -> Journal:
    """One journal of every transaction of `journals` (for one check)."""
    return Journal([txn for journal in journals for txn in journal.txns])


class AofSampler:
    """The size of a Redis server's open incremental AOF file, sampled every `interval` s."""

    def __init__(self, redis: RedisServer, interval: float = 0.02) -> None:
        self.path = _incremental_aof(redis.dir)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _sample(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.path.stat().st_size))
            await asyncio.sleep(self.interval)

    def truncate(self, crashed_at: float, seconds_before: float) -> tuple[int, int]:
        """Cut the file (Redis must be down) to its size `seconds_before` `crashed_at` (a
        time.monotonic() value); returns (size at the crash, size kept)."""
        at_crash = self.path.stat().st_size
        moment = crashed_at - seconds_before
        earlier = [size for t, size in self.samples if t <= moment]
        assert earlier, f"no AOF size sampled before {seconds_before}s ahead of the crash"
        kept = earlier[-1]
        os.truncate(self.path, kept)
        return at_crash, kept


def _incremental_aof(redis_dir: Path) -> Path:
    """The AOF file Redis appends to: the manifest's last incremental file (Redis 7)."""
    directory = redis_dir / "appendonlydir"
    manifest = next(directory.glob("*.manifest"))
    incremental = [
        line.split()[1]
        for line in manifest.read_text().splitlines()
        if line.startswith("file ") and line.split()[-1] == "i"
    ]
    assert incremental, f"no incremental AOF file in {manifest}"
    return directory / incremental[-1]
