"""What became of a batch of deliveries: the ones to acknowledge, counts by result, failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumers.deliveries import Delivery


@dataclass(slots=True)
class Outcomes:
    """What became of a batch: deliveries to acknowledge, counts by result, and failures."""

    done: list[Delivery] = field(default_factory=list)
    """Applied, skipped or duplicate: to be acknowledged."""
    applied: int = 0
    skipped: int = 0
    duplicates: int = 0
    failed: list[tuple[Delivery, BaseException]] = field(default_factory=list)
    blocked: list[Delivery] = field(default_factory=list)
    """Ordered partitions: later events of an aggregate whose earlier event failed, not run;
    they stay pending until it is applied (or dead-lettered)."""

    def add(self, other: Outcomes) -> Outcomes:
        self.done += other.done
        self.applied += other.applied
        self.skipped += other.skipped
        self.duplicates += other.duplicates
        self.failed += other.failed
        self.blocked += other.blocked
        return self

    @classmethod
    def of(cls, deliveries: list[Delivery], won: set[str]) -> Outcomes:
        """Outcomes of deliveries whose handlers all succeeded; `won` holds the ids of those not
        applied before (the rest are duplicates)."""
        skipped = sum(1 for d in deliveries if d.route is None and d.event_id in won)
        return cls(list(deliveries), len(won) - skipped, skipped, len(deliveries) - len(won))
