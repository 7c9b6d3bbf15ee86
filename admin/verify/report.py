"""What `conveyor verify` found: per consumer group, the events of its topics in the window counted
by class and detail, with example event ids, or why the group could not be verified."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from admin.verify.verdicts import Outcome, Verdict

EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
UNKNOWN_MODE = "unknown"


@dataclass(slots=True)
class TopicState:
    """A group on one topic stream, as XINFO GROUPS showed it."""

    topic: str
    on_stream: bool
    lag: int | None
    """Entries not yet delivered to the group; None when Redis cannot tell."""
    pending: int
    """Entries delivered and not acknowledged."""


@dataclass(slots=True)
class GroupReport:
    """One consumer group: how each event of its topics in the window fared."""

    group: str
    mode: str
    """exactly-once, at-least-once, or unknown (a stream group no registry row describes)."""
    ledger_schema: str | None
    ledger_source: str
    """Where the ledger schema came from: registry, option or inferred (its only ledger with
    rows of the group); empty when there is none."""
    topics: list[str] = field(default_factory=list)
    not_verified: str | None = None
    """Why the group's events were not classified (at-least-once, no known ledger); None when
    they were."""
    counts: Counter[Verdict] = field(default_factory=Counter)
    examples: dict[Outcome, list[str]] = field(default_factory=dict)
    streams: dict[str, TopicState] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.not_verified is None

    def count(self, outcome: Outcome) -> int:
        """Events of the class `outcome`, whatever the detail."""
        return sum(n for v, n in self.counts.items() if v.outcome is outcome)

    def details(self, outcome: Outcome) -> dict[str, int]:
        """Events of the class `outcome` by detail, in a stable order."""
        return {v.detail: n for v, n in sorted(self.counts.items()) if v.outcome is outcome and n}

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    def add(self, verdict: Verdict, event_id: str, examples: int) -> None:
        """Count `event_id` under `verdict`, keeping it as an example while there are fewer
        than `examples` of its class (applied events have none)."""
        self.counts[verdict] += 1
        if verdict.outcome is Outcome.APPLIED:
            return
        kept = self.examples.setdefault(verdict.outcome, [])
        if len(kept) < examples:
            kept.append(event_id)


@dataclass(slots=True)
class Report:
    """Everything one run of `conveyor verify` found."""

    schema: str
    key_prefix: str
    since: datetime
    until: datetime
    """The database's time when the run began: rows published later are not looked at."""
    topic: str | None
    events: int = 0
    """Outbox rows in the window (published since --since, or unpublished and created since)."""
    groups: dict[str, GroupReport] = field(default_factory=dict)
    unconsumed: Counter[str] = field(default_factory=Counter)
    """Events of topics no group consumes (no registry row, no stream group), by topic."""

    @property
    def lost(self) -> int:
        return sum(g.count(Outcome.LOST) for g in self.groups.values())

    def as_json(self) -> dict[str, Any]:
        """The report as `--json` prints it."""
        return {
            "schema": self.schema,
            "key_prefix": self.key_prefix,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "topic": self.topic,
            "events": self.events,
            "lost": self.lost,
            "groups": [_group_json(g) for g in sorted(self.groups.values(), key=_by_name)],
            "unconsumed": dict(sorted(self.unconsumed.items())),
        }


def _by_name(group: GroupReport) -> str:
    return group.group


def _group_json(g: GroupReport) -> dict[str, Any]:
    counts: dict[str, Any] = {"events": g.events}
    for outcome in Outcome:
        counts[outcome.value] = {"total": g.count(outcome), **g.details(outcome)}
    return {
        "group": g.group,
        "mode": g.mode,
        "ledger_schema": g.ledger_schema,
        "ledger_source": g.ledger_source or None,
        "topics": sorted(g.topics),
        "verified": g.verified,
        "not_verified": g.not_verified,
        "counts": counts if g.verified else None,
        "examples": {o.value: ids for o, ids in g.examples.items() if ids},
        "streams": [
            {"topic": s.topic, "on_stream": s.on_stream, "lag": s.lag, "pending": s.pending}
            for s in sorted(g.streams.values(), key=lambda s: s.topic)
        ],
    }
