"""CPU time the pipeline costs while it runs: `conveyor relay` and `conveyor consume`, the
PostgreSQL server processes working for them, and Redis; split by part, per 1,000 events."""

from __future__ import annotations

import re
from collections.abc import Sequence, Set
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from admin.bench.harness import Proc, cpu_used, server_cpu

_CLIENT = re.compile(r"\((\d+)\)")
"""A PostgreSQL backend's process title names its client's address, `127.0.0.1(47310)`."""


@dataclass(frozen=True, slots=True)
class CpuCost:
    """CPU seconds each part used over a window in which `events` events were applied."""

    relay: float
    consumer: float
    postgres: float
    redis: float
    events: int
    seconds: float
    """How long the window was."""

    @property
    def total(self) -> float:
        return self.relay + self.consumer + self.postgres + self.redis

    def per_1000(self) -> float:
        """Milliseconds of CPU per 1,000 events applied."""
        return self.total / max(self.events, 1) * 1e6

    def split(self) -> str:
        """The per-1,000-events figure by part, for a figure's detail."""
        parts = (
            ("relay", self.relay),
            ("consumer", self.consumer),
            ("postgres", self.postgres),
            ("redis", self.redis),
        )
        per = 1e6 / max(self.events, 1)
        return " / ".join(f"{name} {seconds * per:,.0f}" for name, seconds in parts) + " ms"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    procs: tuple[float, ...]
    postgres: dict[int, float]
    redis: dict[int, float]


class CpuMeter:
    """Measures a window: `start()`, then `stop(events)` returns what it cost.

    PostgreSQL is counted as its server processes, but the client backends serving anyone other
    than `procs` (the producers, the bench's own queries, other programs sharing the server),
    told apart by the client port in each backend's process title. When titles say nothing
    (`update_process_title = off`), every server process counts but the backends `stop` is
    told to skip.
    Redis is one process serving every client; it is counted whole."""

    def __init__(self, procs: Sequence[Proc], database_url: str) -> None:
        self._procs = tuple(procs)
        self._pg_port = urlsplit(database_url).port or 5432
        self._first: _Snapshot | None = None
        self._ours: set[int] = set()

    def start(self) -> None:
        self._ours = self._client_ports()
        self._first = self._snapshot()

    def stop(self, events: int, seconds: float, skip: Set[int] = frozenset()) -> CpuCost:
        """What the window cost, `events` applied in `seconds`; `skip`: PostgreSQL backends
        never to count (the producers')."""
        assert self._first is not None, "start() first"
        last = self._snapshot()
        ours = self._ours | self._client_ports()
        others = {pid for pid, port in _backends().items() if port not in ours}
        relay, consumer = (b - a for a, b in zip(self._first.procs, last.procs, strict=True))
        return CpuCost(
            relay=relay,
            consumer=consumer,
            postgres=cpu_used(self._first.postgres, last.postgres, others | set(skip)),
            redis=cpu_used(self._first.redis, last.redis),
            events=events,
            seconds=seconds,
        )

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            tuple(p.cpu_seconds() for p in self._procs),
            server_cpu("postgres"),
            server_cpu("redis-server"),
        )

    def _client_ports(self) -> set[int]:
        """Local ports of the measured processes' connections to PostgreSQL."""
        ports: set[int] = set()
        for proc in self._procs:
            for conn in proc.ps.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == self._pg_port:
                    ports.add(conn.laddr.port)
        return ports


def _backends() -> dict[int, int]:
    """Each PostgreSQL client backend's pid and its client's port, from process titles."""
    out: dict[int, int] = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] != "postgres" or not p.info["cmdline"]:
            continue
        if m := _CLIENT.search(" ".join(p.info["cmdline"])):
            out[p.pid] = int(m[1])
    return out
