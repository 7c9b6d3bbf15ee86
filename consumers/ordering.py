"""Per-aggregate order on an ordered partition: which deliveries may run now, which wait.

An event that failed and waits for its retry blocks the later events of its aggregate (other
aggregates pass). A dead-lettered one parks its aggregate's later events (policy `park`) until
the dead letter is reprocessed or resolved, or lets them pass (`pass`). Waiting deliveries stay
pending in Redis on the owning member and are held here, in stream order, until released."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from consumers.deliveries import Delivery
from conveyor.entry_ids import EntryId

POLICIES = ("park", "pass")


def block_after(pieces: deque[list[Delivery]], aggregate: str, blocked: list[Delivery]) -> None:
    """Take the events of `aggregate` out of the pieces after the first (the pieces after a
    failed event, in stream order) into `blocked`."""
    for i in range(1, len(pieces)):
        piece = pieces[i]
        if any(d.aggregate_id == aggregate for d in piece):
            blocked += [d for d in piece if d.aggregate_id == aggregate]
            pieces[i] = [d for d in piece if d.aggregate_id != aggregate]


class OrderedGate:
    """What holds back deliveries of one ordered partition for one group."""

    def __init__(self, retry_stream: str, policy: str = "park") -> None:
        if policy not in POLICIES:
            raise ValueError(f"on_dead_letter must be park or pass, got {policy!r}")
        self._retry = retry_stream
        self.policy = policy
        self.retrying: dict[str, tuple[str, str]] = {}
        """Aggregate -> (stream, entry id) of its event waiting for a retry."""
        self.parked: set[str] = set()
        """Aggregates with an open dead letter (policy park)."""
        self.held: dict[str, list[Delivery]] = {}
        """Aggregate -> its deliveries waiting behind a retry or a dead letter, stream order."""

    def order_key(self, d: Delivery) -> tuple[int, int, int]:
        """Stream order; re-deliveries of dead letters (the retry stream) before new events."""
        at = EntryId.parse(d.entry.entry_id)
        return (0 if d.entry.stream == self._retry else 1, at.ms, at.seq)

    def admit(self, deliveries: Iterable[Delivery]) -> list[Delivery]:
        """The deliveries that may run now, in stream order per aggregate; the others are held.
        A waiting retry that comes due releases its aggregate's held events behind it."""
        out: list[Delivery] = []
        for d in sorted(deliveries, key=self.order_key):
            agg = d.aggregate_id
            blocker = self.retrying.get(agg)
            if blocker == (d.entry.stream, d.entry.entry_id):
                del self.retrying[agg]
                out.append(d)
                if agg not in self.parked:
                    out += self.held.pop(agg, [])
            elif blocker is not None or (agg in self.parked and d.entry.stream != self._retry):
                self.hold([d])
            else:
                out.append(d)
        return out

    def released(self) -> list[Delivery]:
        """Held deliveries whose aggregate no longer waits, to run before anything newer."""
        out: list[Delivery] = []
        for agg in [a for a in self.held if a not in self.retrying and a not in self.parked]:
            out += self.held.pop(agg)
        return out

    def hold(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            waiting = self.held.setdefault(d.aggregate_id, [])
            if not any(w.entry.entry_id == d.entry.entry_id for w in waiting):
                waiting.append(d)
                waiting.sort(key=self.order_key)

    def retry_scheduled(self, d: Delivery) -> None:
        """`d` failed and waits for its retry: later events of its aggregate wait too."""
        self.retrying[d.aggregate_id] = (d.entry.stream, d.entry.entry_id)

    def dead_lettered(self, aggregate: str) -> None:
        """An event of `aggregate` became a dead letter: park its later events, or let them
        pass."""
        self.retrying.pop(aggregate, None)
        if self.policy == "park":
            self.parked.add(aggregate)

    def set_parked(self, aggregates: set[str]) -> None:
        """The aggregates with an open dead letter, as the catalog has them now."""
        if self.policy == "park":
            self.parked = set(aggregates)

    def waiting(self) -> int:
        """Deliveries held."""
        return sum(len(v) for v in self.held.values())

    def forget(self) -> None:
        """The partition changed hands: its new owner takes the pending entries over."""
        self.retrying.clear()
        self.held.clear()
