"""What every scenario of `conveyor bench` stands on: the services, scratch schemas and key
prefixes that are removed afterwards, `conveyor` processes started and measured, progress."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Set
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import psutil

from admin import migrations
from admin.bench.model import Sizes
from conveyor import database, redis_client, wire

TOPIC = "bench"
"""The topic every scenario's events go to."""

PYTHON_CONVEYOR = (sys.executable, "-c", "from admin.cli.app import main; main()")
"""The `conveyor` command of this installation, whichever way it was installed."""


class Progress(Protocol):
    """Where scenarios report what they are doing (a progress display, or nothing)."""

    def stage(self, text: str, total: float | None = None) -> None:
        """A new step begins; `total` units of work when known (then `advance` reports them)."""

    def advance(self, done: float) -> None:
        """`done` units of the current step's total are complete."""


class Silent:
    """A Progress that shows nothing."""

    def stage(self, text: str, total: float | None = None) -> None:
        return None

    def advance(self, done: float) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Scratch:
    """An application schema (migrated to head, with a `bench_effects` table) and a key prefix
    of one's own; both are removed when the scenario ends."""

    schema: str
    prefix: str
    topic: str = TOPIC

    @property
    def stream(self) -> str:
        return wire.Keys(self.topic, self.prefix).events


@dataclass(slots=True)
class Bench:
    """One run of `conveyor bench`: the services it measures against, the sizes, progress, and
    figures scenarios share (the pipeline's maximum sustained rate is measured once)."""

    database_url: str
    redis_url: str
    sizes: Sizes = field(default_factory=Sizes)
    progress: Progress = field(default_factory=Silent)
    traced: bool = False
    """Events carry the traceparent of a sampled producer trace (what tracing costs)."""
    env: dict[str, str] = field(default_factory=dict)
    """Added to the environment of every `conveyor` process the bench starts."""
    shared: dict[str, Any] = field(default_factory=dict)

    @asynccontextmanager
    async def scratch(self) -> AsyncIterator[Scratch]:
        tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"  # the pid: whose run left what
        s = Scratch(schema=f"bench_{tag}", prefix=f"bench{tag}")
        try:
            await asyncio.to_thread(migrations.upgrade, self.database_url, s.schema)
            await self.execute(
                f"CREATE TABLE {s.schema}.bench_effects (event_id uuid NOT NULL, handled_ns bigint)"
            )
            yield s
        finally:
            await self._remove(s)

    async def _remove(self, s: Scratch) -> None:
        try:
            await self._remove_keys(s)
        finally:  # the schema and catalog rows go even when Redis is gone
            conn = await asyncpg.connect(self.database_url)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {s.schema} CASCADE")
                await delete_catalog_rows(conn, s.prefix)
            finally:
                await conn.close()

    async def _remove_keys(self, s: Scratch) -> None:
        r = redis_client.connect(self.redis_url)
        try:
            keys = [k async for k in r.scan_iter(match=f"{s.prefix}:*", count=1000)]
            if redis_client.is_cluster(r):
                for key in keys:  # a cluster takes the keys of one slot per command
                    await r.delete(key)
            else:
                for start in range(0, len(keys), 500):
                    await r.delete(*keys[start : start + 500])
        finally:
            await r.aclose()

    async def execute(self, sql: str, *args: Any) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    def conveyor(self, scratch: Scratch, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Start `conveyor ARGS` on the bench's services and the scratch's key prefix, with its
        gRPC server on a free loopback port; returns once it listens."""
        full_env = {
            **os.environ,
            "CONVEYOR_DATABASE_URL": self.database_url,
            "CONVEYOR_REDIS_URL": self.redis_url,
            "CONVEYOR_KEY_PREFIX": scratch.prefix,
            "CONVEYOR_LOG_LEVEL": "info",
            "CONVEYOR_GRPC_ADDR": "127.0.0.1:0",
            "CONVEYOR_BENCH_SCHEMA": scratch.schema,
            **self.env,
            **(env or {}),
        }
        return Proc.start([*PYTHON_CONVEYOR, *args], full_env)

    def relay(self, scratch: Scratch, *args: str, env: dict[str, str] | None = None) -> Proc:
        """`conveyor relay` on the scratch schema, batch size as sized."""
        return self.conveyor(
            scratch,
            "relay",
            "--schema",
            scratch.schema,
            "--batch-size",
            str(self.sizes.batch),
            *args,
            env=env,
        )

    def consume(
        self, scratch: Scratch, router: str, *args: str, env: dict[str, str] | None = None
    ) -> Proc:
        """`conveyor consume` of group `bench` on the scratch's topic with the router named
        `router` in admin.bench.handlers (`per_event`, `batch`, `noop`, `latency`, `io_wait`)."""
        return self.conveyor(
            scratch,
            "consume",
            "--group",
            "bench",
            "--topic",
            scratch.topic,
            "--router",
            f"admin.bench.handlers:{router}",
            "--ledger-schema",
            scratch.schema,
            "--batch-size",
            str(self.sizes.batch),
            *args,
            env=env,
        )


STALL_SECONDS = 60.0
"""A wait that sees no progress for this long stops the bench (a stuck process, a lost
server) rather than waiting forever."""


class Stall:
    """Raises RuntimeError from `check` when the count it is shown stops growing."""

    def __init__(self, what: str, seconds: float = STALL_SECONDS) -> None:
        self._what = what
        self._seconds = seconds
        self._best = -1
        self._since = time.monotonic()

    def check(self, done: int) -> None:
        now = time.monotonic()
        if done > self._best:
            self._best, self._since = done, now
        elif now - self._since > self._seconds:
            raise RuntimeError(f"{self._what}: no progress for {self._seconds:.0f} s at {done:,}")


async def delete_catalog_rows(conn: asyncpg.Connection, prefix: str) -> None:
    """Delete the catalog rows of deployment (key prefix) `prefix`, in whichever catalog tables
    exist: what a scratch deployment leaves when its schema and keys are gone."""
    for table, column in (
        ("dead_letters", "dlq_stream"),
        ("dead_letter_cursors", "dlq_stream"),
        ("consumers", "key_prefix"),
        ("relays", "key_prefix"),
        ("audit", "key_prefix"),
        ("topic_layouts", "key_prefix"),
        ("partition_leases", "key_prefix"),
    ):
        name = f"{database.CATALOG_SCHEMA}.{table}"
        if await conn.fetchval("SELECT to_regclass($1)", name) is None:
            continue
        if column == "key_prefix":
            await conn.execute(f"DELETE FROM {name} WHERE key_prefix = $1", prefix)
        else:
            await conn.execute(f"DELETE FROM {name} WHERE {column} LIKE $1", prefix + ":%")


_LISTENING = re.compile(r"gRPC listening on [\d.]+:(\d+)")


class Proc:
    """A `conveyor` process the bench started: its gRPC port, CPU time and peak memory."""

    def __init__(self, popen: subprocess.Popen[str], port: int) -> None:
        self.popen = popen
        self.port = port
        self.ps = psutil.Process(popen.pid)

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str], timeout: float = 60.0) -> Proc:
        popen = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert popen.stdout is not None
        lines: list[str] = []
        found: list[int] = []
        ready = threading.Event()

        def read() -> None:  # keep reading, or a full pipe would stall the process
            assert popen.stdout is not None
            for line in popen.stdout:
                if not found and (m := _LISTENING.search(line)):
                    found.append(int(m[1]))
                    ready.set()
                elif len(lines) < 200:
                    lines.append(line)
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(timeout)
        if not found:
            popen.kill()
            popen.wait(10)
            raise RuntimeError(
                f"`conveyor {argv[3]}` did not start (exit {popen.returncode}):\n"
                + "".join(lines[-20:])
            )
        return cls(popen, found[0])

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def peak_rss_mib(self) -> float:
        """The process's peak resident set size so far (VmHWM), in MiB."""
        try:
            with open(f"/proc/{self.popen.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float(self.ps.memory_info().rss) / 2**20  # not Linux: the current RSS

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def server_cpu(name: str) -> dict[int, float]:
    """CPU seconds used so far by each process on this machine called `name` (`postgres`,
    `redis-server`), by pid; empty when none is visible (a server on another machine)."""
    out: dict[int, float] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        times = p.info["cpu_times"]
        if p.info["name"] == name and times is not None:
            out[p.pid] = float(times.user + times.system)
    return out


def cpu_used(
    before: dict[int, float], after: dict[int, float], skip: Set[int] = frozenset()
) -> float:
    """CPU seconds the processes of `after` used since `before` (a process that started in
    between counts from zero; one that ended in between is lost), but the pids in `skip`."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items() if pid not in skip)
