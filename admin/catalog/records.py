"""What the catalog holds and takes: dead-letter and audit records, the dead-letter query, and the
checks every value from a caller passes before it reaches SQL or Redis."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Final

from admin.errors import InvalidInput
from conveyor import database, wire
from conveyor.entry_ids import EntryId

DEFAULT_PAGE_SIZE: Final = 50

MAX_PAGE_SIZE: Final = 1000

MAX_ENTRY_IDS: Final = 10_000
"""Most entry ids one call may name; the gRPC request size limit is far below this anyway."""

MAX_TEXT: Final = 4096
"""Longest filter text or resolution reason accepted."""


@dataclass(frozen=True)
class DeadLetterRecord:
    """One row of conveyor.dead_letters: a dead-letter stream entry and where it stands."""

    id: int
    topic: str
    entry_id: str
    """Id of the entry in the topic's dead-letter stream."""
    source_stream: str
    source_entry_id: str
    group: str
    consumer: str | None
    event_id: str | None
    event_type: str | None
    reason: str
    """Wire name of the DeadLetterReason, one of conveyor.wire.REASONS."""
    error_class: str | None
    error_message: str | None
    attempts: int
    first_failed_at: datetime | None
    last_failed_at: datetime | None
    created_at: datetime
    state: str
    """One of conveyor.database.DEAD_LETTER_STATES."""
    resolution: str | None
    resolved_by: str | None
    updated_at: datetime
    dlq_stream: str
    """Key of the dead-letter stream holding the entry (it carries the deployment's key prefix)."""
    retry_of: str | None = None
    """Entry id of the dead letter whose reprocessing failed again and became this one."""
    retried_as: str | None = None
    """Entry id of the dead letter this one's reprocessing became when it failed again."""


@dataclass(frozen=True)
class AuditEntry:
    """One audited admin action or denial."""

    at: datetime
    principal: str
    action: str
    target_ids: tuple[str, ...]
    reason: str | None
    outcome: str


@dataclass(frozen=True)
class DeadLetterQuery:
    """Which dead letters to list; None matches everything. Checked on construction.

    `error_contains` is plain text looked for case-insensitively in the error message; `since` is
    inclusive and `until` exclusive, both timezone-aware.
    """

    topic: str | None = None
    event_type: str | None = None
    reason: str | None = None
    group: str | None = None
    error_contains: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        if self.topic is not None:
            checked("topic", self.topic, wire.validate_topic)
        if self.group is not None:
            checked("group", self.group, lambda v: wire.validate_name("group", v))
        if self.event_type is not None:
            check_text("event_type", self.event_type, limit=512)
        if self.error_contains is not None:
            check_text("error_contains", self.error_contains, limit=MAX_TEXT, empty=True)
        check_one_of("reason", self.reason, wire.REASONS)
        check_one_of("state", self.state, database.DEAD_LETTER_STATES)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise InvalidInput(
                    f"{name} must carry a time zone", field=name, value=value.isoformat()
                )
        if self.since is not None and self.until is not None and self.since > self.until:
            raise InvalidInput(
                f"since ({self.since.isoformat()}) is after until ({self.until.isoformat()})",
                field="since",
                value=self.since.isoformat(),
            )

    def fingerprint(self, key_prefix: str) -> str:
        """A digest of the filter as one deployment runs it, so a page token cannot be replayed
        against another filter or deployment."""
        # In UTC, so one instant written in two zones still continues the same listing.
        fields = {
            k: v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v
            for k, v in asdict(self).items()
        }
        fields["prefix"] = key_prefix
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def checked(field: str, value: str, check: Callable[[str], object]) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field, value=shown(value)) from None


def check_text(field: str, value: str, *, limit: int, empty: bool = False) -> None:
    """Free text goes to PostgreSQL only as a parameter; it refuses NUL, so refuse it here."""
    if (not value and not empty) or len(value) > limit or "\x00" in value:
        raise InvalidInput(
            f"invalid {field}: use 1 to {limit} characters without NUL",
            field=field,
            value=shown(value),
        )


def check_one_of(field: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise InvalidInput(
            f"invalid {field} {shown(value)!r}; known: {', '.join(allowed)}",
            field=field,
            value=shown(value),
        )


def shown(value: str) -> str:
    """The start of a bad value, safe to echo back (a 10 kB string stays in the request)."""
    return value[:64] + ("..." if len(value) > 64 else "")


def parse_entry_id(text: str) -> str:
    """A Redis stream entry id `<ms>-<seq>` in normal form, or InvalidInput(field="entry_id").

    The contract's rule (`EntryId.parse_strict`, the CLI's too): both parts ASCII decimal within
    64 bits; signs, whitespace and anything else are refused before the id gets near Redis or the
    database.
    """
    try:
        return str(EntryId.parse_strict(text))
    except ValueError as exc:
        raise InvalidInput(str(exc), field="entry_id", value=shown(text)) from None


def entry_ids(entry_ids: Sequence[str]) -> list[str]:
    if len(entry_ids) > MAX_ENTRY_IDS:
        raise InvalidInput(
            f"too many entry ids ({len(entry_ids)}); at most {MAX_ENTRY_IDS} per call",
            field="entry_ids",
            value=str(len(entry_ids)),
        )
    return [parse_entry_id(e) for e in entry_ids]


def checked_topic(topic: str) -> str:
    checked("topic", topic, wire.validate_topic)
    return topic


@dataclass(frozen=True)
class Skip:
    """A dead letter a reprocess left as it was, and why."""

    entry_id: str
    reason: str
    """One of admin.catalog.skips.REASONS: `reprocessing`, `reprocessed`, `resolved`,
    `other_deployment`, `gone`, `changed`."""
    detail: str
    """The reason in words, naming who got there first when the catalog knows."""


@dataclass(frozen=True)
class Progress:
    """How far a reprocess call has got; the last one reported has `finished` set."""

    done: int = 0
    """Dead letters looked at so far."""
    total: int = 0
    requeued: int = 0
    """Sent to their group's retry stream (in a dry run: would be)."""
    duplicates: int = 0
    """Already applied by their exactly-once group: resolved as duplicates, not sent."""
    skipped: int = 0
    """Not open (resolved, reprocessing, reprocessed, or taken by a concurrent call), of another
    deployment's streams, or gone from the dead-letter stream."""
    finished: bool = False
    skips: tuple[Skip, ...] = ()
    """Why each skipped dead letter was skipped, in order (the first MAX_SKIPS_SHOWN)."""
    replayed: bool = False
    """The outcome of an earlier call with the same idempotency key: this call changed nothing."""


MAX_SKIPS_SHOWN: Final = 1000
"""Most skipped dead letters a reprocess explains one by one; `skipped` counts them all."""
