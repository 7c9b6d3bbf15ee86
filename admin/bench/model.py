"""What `conveyor bench` measures and prints: sizes in, figures out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each scenario does; every field is a `conveyor bench` flag. The defaults
    finish all scenarios in under three minutes on a 2-core machine."""

    events: int = 50_000
    """Events per throughput round (relay, each consumer form, the yardstick beside them)."""
    pipeline_events: int = 50_000
    """Events the full-pipeline scenario's producers commit, 100 per transaction."""
    batch: int = 1000
    """Batch size of the relay, the consumers and the yardstick."""
    rounds: int = 1
    """Rounds of each throughput comparison; the table shows medians."""
    latency_rate: int = 1000
    """Offered load of the latency scenario, events/s, one event per transaction."""
    latency_seconds: float = 8.0
    """How long the latency scenario produces, with NOTIFY on and again with it off."""
    cpu_seconds: float = 6.0
    """How long each CPU-cost load (100 %, 50 %, 10 %) is measured."""
    ops_calls: int = 600
    """Unary calls to each gRPC target in the ops-latency scenario."""
    backlog_small: int = 10_000
    """The small backlog of the memory scenario."""
    backlog_large: int = 100_000
    """The large backlog of the memory scenario (the target speaks of 1,000,000)."""
    notify_seconds: float = 2.0
    """How long each producer-commit measurement of the NOTIFY scenario runs."""
    notify_connections: tuple[int, ...] = (1, 4, 16)
    """Producer connection counts of the NOTIFY scenario."""

    def __post_init__(self) -> None:
        for name in ("events", "pipeline_events", "batch", "rounds", "latency_rate", "ops_calls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("latency_seconds", "cpu_seconds", "notify_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not 1 <= self.backlog_small <= self.backlog_large:
            raise ValueError(
                f"backlog sizes must satisfy 1 <= small <= large, got "
                f"{self.backlog_small} and {self.backlog_large}"
            )
        if not self.notify_connections or min(self.notify_connections) < 1:
            raise ValueError(f"notify connections must be >= 1, got {self.notify_connections!r}")


Compare = Literal["ratio>=", "ratio<=", "value<="]


@dataclass(frozen=True, slots=True)
class Target:
    """A goal: the figure's ratio to its baseline at least / at most `bound`, or its value at
    most `bound` (in the figure's unit)."""

    compare: Compare
    bound: float

    def met(self, value: float, ratio: float | None) -> bool | None:
        if self.compare == "value<=":
            return value <= self.bound
        if ratio is None:
            return None
        return ratio >= self.bound if self.compare == "ratio>=" else ratio <= self.bound

    def __str__(self) -> str:
        if self.compare == "value<=":
            return f"<= {self.bound:g}"
        return f"{'>=' if self.compare == 'ratio>=' else '<='} {self.bound:g}x"


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the table: a measured value, what it is compared with, and the goal."""

    scenario: str
    """The scenario that measured it (`relay`, `consumer`, `latency`, ...)."""
    name: str
    """What was measured, e.g. `exactly-once per-event` or `p99, NOTIFY on`."""
    value: float
    unit: str
    """`events/s`, `ms`, `ms CPU per 1,000 events`, `MiB`, `commits/s`."""
    baseline: float | None = None
    """The figure it is a ratio to, in the same unit (None: an absolute figure)."""
    baseline_name: str | None = None
    """What the baseline is, e.g. `yardstick --handler-insert --conns 2`."""
    target: Target | None = None
    detail: str = ""
    """How it was measured (events, seconds, rounds), for the reader of the table."""
    samples: tuple[float, ...] = field(default=())
    """Every round's value when there were several (the value is their median)."""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is none or no ratio to judge."""
        return None if self.target is None else self.target.met(self.value, self.ratio)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = str(self.target) if self.target else None
        out["ratio"] = self.ratio
        out["met"] = self.met
        out["samples"] = list(self.samples)
        return out
