"""Where a phase's time went: CPU seconds of named processes and of the PostgreSQL backends
serving them, beside what the whole machine did meanwhile (other programs included).

    meter = CpuMeter(database_url, {"consumer": [pid], "producers": [os.getpid()]})
    await meter.start()
    ...
    usage = await meter.stop()
    print(usage.describe())
    # 31.0s: consumer 14.2s CPU + its postgres backends 6.1s; producers 0.4s + 0.1s;
    #        redis 1.2s; machine 1.96 of 2 cores busy

A process's backends are those whose client port is one of its connections to the server (read
from pg_stat_activity at start, at each `look()` and at stop): one first seen after the start was
born in the window and counts whole; one that ended counts up to the last look that saw it.
Redis is one process serving every client, counted whole. Linux only (psutil)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
import psutil


def _cpu(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _redis_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]


@dataclass(frozen=True)
class Usage:
    """CPU seconds per part over `seconds` of wall time; `busy` cores of the machine on
    average (of `cores`)."""

    seconds: float
    processes: dict[str, float]
    backends: dict[str, float]
    redis: float
    busy: float
    cores: int

    def describe(self) -> str:
        parts = "; ".join(
            f"{name} {cpu:.1f}s CPU + its postgres backends {self.backends.get(name, 0.0):.1f}s"
            for name, cpu in self.processes.items()
        )
        return (
            f"{self.seconds:.1f}s: {parts}; redis {self.redis:.1f}s (all of it); "
            f"machine {self.busy:.2f} of {self.cores} cores busy"
        )


class CpuMeter:
    """CPU used by `parts` (name -> process ids) and their PostgreSQL backends over a window."""

    def __init__(self, database_url: str, parts: Mapping[str, Iterable[int]]) -> None:
        self._url = database_url
        self._port = urlsplit(database_url).port or 5432
        self._parts = {name: list(pids) for name, pids in parts.items()}
        self._first: dict[int, float] = {}
        self._seen: dict[int, float] = {}
        self._backends: dict[str, set[int]] = {}
        self._began = 0.0
        self._machine = psutil.cpu_times()

    async def _find_backends(self) -> None:
        ports: dict[int, str] = {}
        for name, pids in self._parts.items():
            for pid in pids:
                try:
                    conns = psutil.Process(pid).net_connections(kind="tcp")
                except psutil.Error:
                    continue
                for c in conns:
                    if c.raddr and c.raddr.port == self._port:
                        ports[c.laddr.port] = name
        conn = await asyncpg.connect(self._url)
        try:
            rows = await conn.fetch(
                "SELECT pid, client_port FROM pg_stat_activity WHERE client_port = ANY($1::int[])",
                list(ports),
            )
        finally:
            await conn.close()
        for row in rows:
            self._backends.setdefault(ports[row["client_port"]], set()).add(row["pid"])

    def _snapshot(self) -> dict[int, float]:
        pids = {p for pids in self._parts.values() for p in pids}
        pids |= {p for pids in self._backends.values() for p in pids}
        pids |= set(_redis_pids())
        return {pid: _cpu(pid) for pid in pids}

    async def start(self) -> None:
        await self._find_backends()
        self._first = self._snapshot()
        self._seen = dict(self._first)
        self._machine = psutil.cpu_times()
        self._began = time.monotonic()

    async def look(self) -> None:
        """Note the backends (and everyone's CPU) now: call it during the window when backends
        come and go (a producer's connections closed before `stop`)."""
        await self._find_backends()
        self._seen |= {pid: cpu for pid, cpu in self._snapshot().items() if cpu}

    async def stop(self) -> Usage:
        seconds = time.monotonic() - self._began
        machine = psutil.cpu_times()
        await self.look()
        last = self._seen

        def used(pids: Iterable[int]) -> float:
            return sum(last.get(p, 0.0) - self._first.get(p, 0.0) for p in pids)

        idle = (machine.idle + machine.iowait) - (self._machine.idle + self._machine.iowait)
        total = sum(machine) - sum(self._machine)
        cores = psutil.cpu_count() or 1
        return Usage(
            seconds,
            {name: used(pids) for name, pids in self._parts.items()},
            {name: used(self._backends.get(name, ())) for name in self._parts},
            used(_redis_pids()),
            (total - idle) / total * cores if total else 0.0,
            cores,
        )
