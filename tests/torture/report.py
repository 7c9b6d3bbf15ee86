"""The checker's verdict: counts per group, totals, and examples with their traces.

    report.table()          a small fixed-width table, one row per group, then the totals
    report.problems()       {(group, kind): count} of every non-zero count
    report.assert_clean()   AssertionError with the table, the seed (and how to replay it) and,
                            for each non-zero count, up to 5 example events with their traces

Kinds: `lost`, `duplicate`, `phantom`, `misrouted`, `order` (see checker.py for each rule).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

KINDS = ("lost", "duplicate", "phantom", "misrouted", "order")


@dataclass
class GroupCounts:
    """One group's figures. `order` is None when the scenario promised no order for it."""

    group: str
    exactly_once: bool
    expected: int = 0  # events of committed transactions
    applied: int = 0  # of those, events with at least one effect in the group
    effects: int = 0  # effect rows of the group (any event)
    dead_lettered: int = 0  # committed events the group left as open or resolved dead letters
    lost: int = 0
    duplicate: int = 0
    phantom: int = 0
    misrouted: int = 0
    order: int | None = None

    def count(self, kind: str) -> int:
        value = getattr(self, kind)
        return 0 if value is None else int(value)


@dataclass
class Report:
    seed: int | None
    groups: list[GroupCounts]
    totals: dict[str, int]
    examples: dict[tuple[str, str], list[uuid.UUID]] = field(default_factory=dict)
    """(group, kind) -> up to 5 event ids."""
    notes: dict[tuple[str, str, uuid.UUID], str] = field(default_factory=dict)
    """(group, kind, event id) -> why it was counted, where the rule has several cases."""
    traces: dict[uuid.UUID, str] = field(default_factory=dict)

    def problems(self) -> dict[tuple[str, str], int]:
        return {
            (g.group, kind): g.count(kind) for g in self.groups for kind in KINDS if g.count(kind)
        }

    @property
    def clean(self) -> bool:
        return not self.problems()

    def table(self) -> str:
        head = ("group", "mode", "expected", "applied", "effects", "dead", *KINDS)
        rows = [
            (
                g.group,
                "EO" if g.exactly_once else "ALO",
                str(g.expected),
                str(g.applied),
                str(g.effects),
                str(g.dead_lettered),
                str(g.lost),
                str(g.duplicate) if g.exactly_once else "-",
                str(g.phantom),
                str(g.misrouted),
                "-" if g.order is None else str(g.order),
            )
            for g in self.groups
        ]
        widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

        def line(row: tuple[str, ...]) -> str:
            cells = zip(row, widths, strict=True)
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))

        lines = [line(row) for row in (head, *rows)]
        t = self.totals
        lines.append(
            f"transactions: {t.get('txn_ok', 0)} committed, {t.get('txn_failed', 0)} failed "
            f"({t.get('txn_doomed', 0)} on purpose), {t.get('txn_unknown', 0)} unknown at commit "
            f"(resolved: {t.get('unknown_committed', 0)} committed); events: "
            f"{t.get('events_committed', 0)} committed, {t.get('events_failed', 0)} failed"
        )
        if self.seed is not None:
            lines.append(f"seed {self.seed} (replay with TORTURE_SEED={self.seed})")
        return "\n".join(lines)

    def describe_problems(self) -> str:
        out: list[str] = []
        for (group, kind), count in self.problems().items():
            examples = self.examples.get((group, kind), [])
            out.append(f"{group}: {count} {kind}, e.g.:")
            for event_id in examples:
                note = self.notes.get((group, kind, event_id))
                out.append(f"- {event_id}" + (f" ({note})" if note else ""))
                trace = self.traces.get(event_id)
                if trace:
                    out.append(trace)
        return "\n".join(out)

    def assert_clean(self) -> None:
        """AssertionError with the table, the seed and traced examples unless every count is 0."""
        if self.clean:
            return
        seed = (
            f"seed {self.seed}: replay with TORTURE_SEED={self.seed}"
            if self.seed is not None
            else "no seed"
        )
        raise AssertionError(
            f"torture check failed ({seed})\n{self.table()}\n{self.describe_problems()}"
        )
