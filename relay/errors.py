"""Errors raised by the producer API and the relay."""

from __future__ import annotations

from conveyor.layouts import Layouts, routing_changes


class RelayError(Exception):
    """Base of every error the relay package raises on purpose."""


class NotInTransaction(RelayError):
    """`enqueue` was called on a connection with no open transaction; nothing was written."""

    def __init__(self) -> None:
        super().__init__(
            "enqueue() needs an open transaction on the connection, so the event commits or rolls "
            "back with the business change: wrap the call in `async with conn.transaction():`"
        )


class EventTooLarge(RelayError, ValueError):
    """The serialized event exceeds the size cap; nothing was written."""

    def __init__(self, *, event_type: str, size: int, limit: int) -> None:
        self.event_type = event_type
        self.size = size
        self.limit = limit
        super().__init__(
            f"event of type {event_type} is {size} bytes serialized, over the {limit}-byte cap; "
            "store large data elsewhere and put a reference in the event"
        )


class NotAMessage(RelayError, TypeError):
    """What was passed as the event payload is not a protobuf message."""

    def __init__(self, value: object) -> None:
        self.value_type = type(value).__qualname__
        super().__init__(
            f"enqueue() takes a protobuf message as the event payload, got "
            f"{type(value).__module__}.{self.value_type}: {value!r:.80}"
        )


class XaddRejected(RelayError):
    """Redis answered some XADDs of a batch with an error reply (WRONGTYPE, OOM, NOPERM...) and
    appended the others: `accepted` holds the outbox ids of the rows it appended;
    `out_of_memory`, that Redis refused them for want of memory (at maxmemory, nothing it may
    evict), and `error` is then that refusal."""

    def __init__(
        self,
        error: Exception,
        *,
        rejected: int,
        accepted: frozenset[int],
        out_of_memory: bool = False,
    ) -> None:
        self.error = error
        self.rejected = rejected
        self.accepted = accepted
        self.out_of_memory = out_of_memory
        why = f"out of memory (OOM): {error}" if out_of_memory else str(error)
        super().__init__(f"Redis rejected {rejected} XADD(s) of the batch: {why}")


class LayoutChanged(RelayError):
    """The partition count of a topic changed in the catalog while the relay ran: it stopped
    publishing (the batches in flight finished by the old layout) so that a restart routes by
    the new one, rather than moving an aggregate's events to another stream under it."""

    def __init__(self, changes: list[str]) -> None:
        self.changes = changes
        super().__init__(
            f"topic layout changed while the relay ran ({'; '.join(changes)}): stopped "
            "publishing; start the relay again to route by the new layout (operations.md, "
            "Partitioned topics)"
        )

    @classmethod
    def check(cls, before: Layouts, now: Layouts) -> None:
        """Raise one when the partition counts of `now` differ from those of `before`: a relay
        reads the layouts again once registered, since `conveyor topic partition` refuses a
        change only while it sees a relay registered."""
        if changes := routing_changes(before, now):
            raise cls(changes)


class NotReplicated(RelayError):
    """Fewer replicas than the relay's `wait_replicas` acknowledged a batch's XADDs within
    `wait_timeout` (Redis's WAIT): the batch counts as failed, its rows stay unpublished and are
    retried (the entries Redis did append come again, and consumers' ledgers absorb them)."""

    def __init__(self, *, node: str, wanted: int, acknowledged: int, seconds: float) -> None:
        self.node = node
        self.wanted = wanted
        self.acknowledged = acknowledged
        super().__init__(
            f"only {acknowledged} of the {wanted} replica(s) asked for (--wait-replicas) "
            f"acknowledged the batch's XADDs on Redis {node} within {seconds:g} s (WAIT): the "
            "rows stay unpublished and are retried; is a replica down or lagging?"
        )
