"""Per-aggregate order on an ordered partition: which deliveries may run now, which wait.

An event that failed and waits for its retry blocks the later events of its aggregate (other
aggregates pass). A dead-lettered one parks its aggregate's later events (policy `park`) until
the dead letter is reprocessed or resolved, or lets them pass (`pass`). Waiting deliveries stay
pending in Redis on the owning member and are held here, in stream order, until released; past
`HELD_BATCHES` batches of them, the later events of an aggregate are held in Redis only (its
spill mark notes where they start) and taken back from there, in stream order, once it is
released (`consumers.ordered_backlog`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from consumers.deliveries import Delivery, Entry
from conveyor import wire
from conveyor.entry_ids import EntryId
from conveyor.replies import text

POLICIES = ("park", "pass")
HELD_BATCHES = 2
"""Deliveries a gate holds in memory, in batches of the worker: beyond them, an aggregate's
later events are left pending in Redis only."""


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

    def __init__(self, retry_stream: str, policy: str = "park", *, cap: int = 1000) -> None:
        if policy not in POLICIES:
            raise ValueError(f"on_dead_letter must be park or pass, got {policy!r}")
        if cap < 1:
            raise ValueError(f"the cap of held deliveries must be at least 1, got {cap}")
        self._retry = retry_stream
        self.cap = cap
        """Deliveries held in memory at most (beyond those of the retry stream)."""
        self.spilled: dict[str, EntryId] = {}
        """Aggregate -> the first of its events of the event stream left pending in Redis
        only: it and every later event of the aggregate wait there until taken back."""
        self._count = 0
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
                    back = self.held.pop(agg, [])
                    self._count -= len(back)
                    out += back
            elif (
                blocker is not None
                or (agg in self.parked and d.entry.stream != self._retry)
                or self._beyond_mark(d)
            ):
                self.hold([d])
            else:
                out.append(d)
        return out

    def behind(self, admitted: list[Delivery], dead: Sequence[Entry]) -> list[Delivery]:
        """Entries dead-lettered as they were read (`dead`: poison, over the attempts cap) park
        their aggregates (policy park): the admitted events of those aggregates after them are
        held instead; the others are returned."""
        if self.policy != "park" or not dead:
            return admitted
        after: dict[str, tuple[str, EntryId]] = {}
        for e in dead:
            raw = None if e.raw is None else e.fields.get(wire.F_AGGREGATE_ID)
            if raw is not None and (agg := text(raw)) not in after:
                after[agg] = (e.stream, EntryId.parse(e.entry_id))
                self.dead_lettered(agg)
        out: list[Delivery] = []
        for d in admitted:
            at = after.get(d.aggregate_id)
            if (
                at is None
                or d.entry.stream == self._retry
                or (d.entry.stream == at[0] and EntryId.parse(d.entry.entry_id) < at[1])
            ):
                out.append(d)
            else:
                self.hold([d])
        return out

    def released(self) -> list[Delivery]:
        """Held deliveries whose aggregate no longer waits, to run before anything newer."""
        out: list[Delivery] = []
        for agg in [a for a in self.held if a not in self.retrying and a not in self.parked]:
            out += self.held.pop(agg)
        self._count -= len(out)
        return out

    def take_spilled(self) -> dict[str, EntryId]:
        """The spill marks of the aggregates that no longer wait, handed over (and forgotten
        here) to take their events back from Redis, in stream order, before anything newer."""
        free = {
            a: at
            for a, at in self.spilled.items()
            if a not in self.retrying and a not in self.parked and a not in self.held
        }
        for a in free:
            del self.spilled[a]
        return free

    def _beyond_mark(self, d: Delivery) -> bool:
        mark = self.spilled.get(d.aggregate_id)
        return (
            mark is not None
            and d.entry.stream != self._retry
            and EntryId.parse(d.entry.entry_id) >= mark
        )

    def hold(self, deliveries: Sequence[Delivery]) -> None:
        """Hold `deliveries` in memory, up to the cap; an aggregate's events of the event
        stream past it (and all after them) are left pending in Redis only."""
        for d in deliveries:
            agg = d.aggregate_id
            if self._beyond_mark(d):
                continue
            waiting = self.held.setdefault(agg, [])
            if any(w.entry.entry_id == d.entry.entry_id for w in waiting):
                continue
            waiting.append(d)
            waiting.sort(key=self.order_key)
            self._count += 1
            mark = self.spilled.get(agg)
            if mark is not None:  # held before its mark: the events from the mark on wait in Redis
                continue
            if self._count > self.cap and waiting[-1].entry.stream != self._retry:
                last = waiting.pop()
                self._count -= 1
                self.spilled[agg] = EntryId.parse(last.entry.entry_id)
                if not waiting:
                    del self.held[agg]

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
        """Deliveries held in memory."""
        return self._count

    def forget(self) -> None:
        """The partition changed hands: its new owner takes the pending entries over."""
        self.retrying.clear()
        self.held.clear()
        self.spilled.clear()
        self._count = 0
