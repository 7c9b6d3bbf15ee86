"""Catalog queries of the ops plane: dead-letter state, its audit trail, and checks on input."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg

from admin.errors import InvalidInput
from conveyor import database, wire

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
MAX_ENTRY_IDS: Final = 10_000
"""Most entry ids one call may name; the gRPC request size limit is far below this anyway."""
MAX_TEXT: Final = 4096
"""Longest filter text or resolution reason accepted."""

_DEAD_LETTERS: Final = f"{database.CATALOG_SCHEMA}.{database.DEAD_LETTERS_TABLE}"
_AUDIT: Final = f"{database.CATALOG_SCHEMA}.{database.AUDIT_TABLE}"
_COLUMNS: Final = (
    "id, topic, dlq_stream, dlq_entry_id, source_stream, source_entry_id, consumer_group, "
    "consumer_name, event_id, event_type, reason, error_class, error_message, attempts, "
    "first_failed_at, last_failed_at, created_at, state, resolution, resolved_by, updated_at, "
    "retry_of, retried_as"
)
_U64_MAX: Final = 2**64 - 1
# Twenty digits hold any unsigned 64-bit number; [0-9] rather than \d, which takes other scripts.
_ENTRY_ID_RE: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_ENTRY_ID_MAX_LEN: Final = 41
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,400}\.[A-Za-z0-9_-]{43}")
_TOKEN_VERSION: Final = 1
_AUDIT_LIMIT: Final = 1000


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
    prefix: str | None = None
    """Only the dead letters of the deployment with this key prefix (None: every deployment
    sharing the catalog)."""
    event_type: str | None = None
    reason: str | None = None
    group: str | None = None
    error_contains: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        if self.topic is not None:
            _checked("topic", self.topic, wire.validate_topic)
        if self.prefix is not None:
            _checked("prefix", self.prefix, wire.validate_prefix)
        if self.group is not None:
            _checked("group", self.group, lambda v: wire.validate_name("group", v))
        if self.event_type is not None:
            _check_text("event_type", self.event_type, limit=512)
        if self.error_contains is not None:
            _check_text("error_contains", self.error_contains, limit=MAX_TEXT, empty=True)
        _check_one_of("reason", self.reason, wire.REASONS)
        _check_one_of("state", self.state, database.DEAD_LETTER_STATES)
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

    def fingerprint(self) -> str:
        """A digest of the filter, so a page token cannot be replayed against another one."""
        # In UTC, so one instant written in two zones still continues the same listing.
        fields = {
            k: v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v
            for k, v in asdict(self).items()
        }
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _checked(field: str, value: str, check: Callable[[str], object]) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field, value=_shown(value)) from None


def _check_text(field: str, value: str, *, limit: int, empty: bool = False) -> None:
    """Free text goes to PostgreSQL only as a parameter; it refuses NUL, so refuse it here."""
    if (not value and not empty) or len(value) > limit or "\x00" in value:
        raise InvalidInput(
            f"invalid {field}: use 1 to {limit} characters without NUL",
            field=field,
            value=_shown(value),
        )


def _check_one_of(field: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise InvalidInput(
            f"invalid {field} {_shown(value)!r}; known: {', '.join(allowed)}",
            field=field,
            value=_shown(value),
        )


def _shown(value: str) -> str:
    """The start of a bad value, safe to echo back (a 10 kB string stays in the request)."""
    return value[:64] + ("..." if len(value) > 64 else "")


def parse_entry_id(text: str) -> str:
    """A Redis stream entry id `<ms>-<seq>` in normal form, or InvalidInput(field="entry_id").

    Both parts are decimal and fit in 64 bits; signs, whitespace and anything else are refused
    before the id gets near Redis or the database.
    """
    match = _ENTRY_ID_RE.fullmatch(text) if len(text) <= _ENTRY_ID_MAX_LEN else None
    if match is None or max(int(match[1]), int(match[2])) > _U64_MAX:
        raise InvalidInput(
            f"invalid entry id {_shown(text)!r}: use <milliseconds>-<sequence>, "
            "e.g. 1700000000000-0",
            field="entry_id",
            value=_shown(text),
        )
    return f"{int(match[1])}-{int(match[2])}"


def _entry_ids(entry_ids: Sequence[str]) -> list[str]:
    if len(entry_ids) > MAX_ENTRY_IDS:
        raise InvalidInput(
            f"too many entry ids ({len(entry_ids)}); at most {MAX_ENTRY_IDS} per call",
            field="entry_ids",
            value=str(len(entry_ids)),
        )
    return [parse_entry_id(e) for e in entry_ids]


def _topic(topic: str) -> str:
    _checked("topic", topic, wire.validate_topic)
    return topic


def scope(topic: str, prefix: str | None) -> tuple[str, str]:
    """The column and value that select one topic's dead letters: its dead-letter stream under
    `prefix` (one deployment), or, when `prefix` is None, the topic in every deployment sharing
    the catalog. The column is one of two constants; the value is a query parameter."""
    topic = _topic(topic)
    if prefix is None:
        return "topic", topic
    _checked("prefix", prefix, wire.validate_prefix)
    return "dlq_stream", wire.Keys(topic, prefix).dlq


def _stream_start(prefix: str | None) -> str | None:
    """How the dead-letter streams of the deployment with key prefix `prefix` begin (a prefix
    has no braces, so `prefix:{` starts no other deployment's keys)."""
    return None if prefix is None else f"{prefix}:{{"


def _like_literal(text: str | None) -> str | None:
    """An ILIKE pattern (ESCAPE '\\') matching `text` anywhere, its metacharacters literal; None
    for no text, which matches every row (also those without an error message)."""
    if not text:
        return None
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _record(row: Any) -> DeadLetterRecord:
    event_id = row["event_id"]
    return DeadLetterRecord(
        id=row["id"],
        topic=row["topic"],
        entry_id=row["dlq_entry_id"],
        source_stream=row["source_stream"],
        source_entry_id=row["source_entry_id"],
        group=row["consumer_group"],
        consumer=row["consumer_name"],
        event_id=None if event_id is None else str(event_id),
        event_type=row["event_type"],
        reason=row["reason"],
        error_class=row["error_class"],
        error_message=row["error_message"],
        attempts=row["attempts"],
        first_failed_at=row["first_failed_at"],
        last_failed_at=row["last_failed_at"],
        created_at=row["created_at"],
        state=row["state"],
        resolution=row["resolution"],
        resolved_by=row["resolved_by"],
        updated_at=row["updated_at"],
        dlq_stream=row["dlq_stream"],
        retry_of=row["retry_of"],
        retried_as=row["retried_as"],
    )


# --- page tokens -------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def encode_page_token(key: bytes, query: DeadLetterQuery, after_id: int) -> str:
    """The opaque, signed token for the page after the row with id `after_id`."""
    payload = json.dumps(
        {"v": _TOKEN_VERSION, "after": after_id, "q": query.fingerprint()}, separators=(",", ":")
    ).encode()
    return f"{_b64(payload)}.{_b64(_sign(key, payload))}"


def decode_page_token(key: bytes, query: DeadLetterQuery, token: str) -> int:
    """The row id a token continues after; InvalidInput(field="page_token") unless this server
    signed it for this same query."""
    try:
        if not _TOKEN_RE.fullmatch(token):
            raise ValueError("malformed")
        body, mac = token.split(".")
        payload = _unb64(body)
        # The signature is checked before the payload is parsed: nothing forged is ever read.
        if not hmac.compare_digest(_unb64(mac), _sign(key, payload)):
            raise ValueError("bad signature")
        data = json.loads(payload)
        after = data["after"]
        if data["v"] != _TOKEN_VERSION or type(after) is not int or after < 1:
            raise ValueError("unknown layout")
        if data["q"] != query.fingerprint():
            raise ValueError("issued for another filter")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidInput(
            f"invalid page token ({exc}); pass the next_page_token of the previous page of the "
            "same query",
            field="page_token",
            value=_shown(token),
        ) from None
    return after


def _page_size(page_size: int) -> int:
    if type(page_size) is not int or not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInput(
            f"invalid page size {page_size!r}: use 1 to {MAX_PAGE_SIZE}, or 0 for "
            f"{DEFAULT_PAGE_SIZE}",
            field="page_size",
            value=str(page_size),
        )
    return page_size or DEFAULT_PAGE_SIZE


# --- queries -----------------------------------------------------------------------------------


def _where(query: DeadLetterQuery, after_id: int | None) -> tuple[str, list[Any]]:
    """The WHERE clause and its parameters; the SQL text is built from constants only."""
    conditions: list[tuple[str, Any]] = [
        ("topic = ${}", query.topic),
        ("starts_with(dlq_stream, ${})", _stream_start(query.prefix)),
        ("event_type = ${}", query.event_type),
        ("reason = ${}", query.reason),
        ("consumer_group = ${}", query.group),
        ("state = ${}", query.state),
        ("created_at >= ${}", query.since),
        ("created_at < ${}", query.until),
        # E'' keeps the escape a single backslash whatever standard_conforming_strings says.
        ("error_message ILIKE ${} ESCAPE E'\\\\'", _like_literal(query.error_contains)),
        ("id < ${}", after_id),
    ]
    clauses: list[str] = []
    args: list[Any] = []
    for sql, value in conditions:
        if value is None:
            continue
        args.append(value)
        clauses.append(sql.format(len(args)))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


async def list_dead_letters(
    pool: asyncpg.Pool,
    query: DeadLetterQuery,
    *,
    page_size: int,
    page_token: str | None,
    token_key: bytes,
) -> tuple[list[DeadLetterRecord], str | None]:
    """One page of dead letters matching `query`, newest first, and the token of the next page
    (None on the last one). `token_key` signs the tokens; every server of a deployment that
    continues another's pages needs the same key."""
    if len(token_key) < 16:
        raise ValueError("token_key must be at least 16 bytes")
    size = _page_size(page_size)
    after = decode_page_token(token_key, query, page_token) if page_token else None
    where, args = _where(query, after)
    # Keyset on id (the primary key): stable under concurrent inserts, and one row more than the
    # page tells whether a next page exists without counting.
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS}{where} ORDER BY id DESC LIMIT {size + 1}", *args
    )
    records = [_record(r) for r in rows[:size]]
    more = len(rows) > size
    return records, encode_page_token(token_key, query, records[-1].id) if more else None


async def get_dead_letter(
    pool: asyncpg.Pool, topic: str, entry_id: str, *, prefix: str | None = None
) -> DeadLetterRecord | None:
    """The dead letter at `entry_id` of the topic's dead-letter stream, or None (see `scope`)."""
    entry = parse_entry_id(entry_id)
    column, value = scope(topic, prefix)
    # Without a prefix, two deployments sharing the catalog could both hold the id: the newest
    # record wins.
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS} WHERE {column} = $1 AND dlq_entry_id = $2 "
        "ORDER BY id DESC LIMIT 1",
        value,
        entry,
    )
    return None if row is None else _record(row)


async def get_dead_letters(
    pool: asyncpg.Pool, topic: str, entry_ids: Sequence[str], *, prefix: str | None = None
) -> list[DeadLetterRecord]:
    """The dead letters of the topic with these entry ids, oldest first; unknown ids are absent
    (see `scope` for `prefix`)."""
    entries = _entry_ids(entry_ids)
    column, value = scope(topic, prefix)
    if not entries:
        return []
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS} WHERE {column} = $1 AND dlq_entry_id = ANY($2) "
        "ORDER BY id",
        value,
        entries,
    )
    return [_record(r) for r in rows]


async def dead_letters_for_event(
    pool: asyncpg.Pool, event_id: uuid.UUID, *, prefix: str | None = None
) -> list[DeadLetterRecord]:
    """Every dead letter of the event, in any topic or group, oldest first; only those of the
    deployment with key prefix `prefix` when it is given."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM {_DEAD_LETTERS} WHERE event_id = $1 "
        "AND ($2::text IS NULL OR starts_with(dlq_stream, $2)) ORDER BY id",
        event_id,
        _stream_start(prefix),
    )
    return [_record(r) for r in rows]


async def resolve(
    conn: asyncpg.Connection,
    topic: str,
    entry_ids: Sequence[str],
    *,
    reason: str,
    principal: str,
    prefix: str | None = None,
) -> int:
    """Mark the topic's dead letters with these entry ids resolved; return how many changed.

    Already resolved ones keep their first resolution. Runs on `conn`, so the caller can write
    the audit row in the same transaction.
    """
    if not reason.strip():
        raise InvalidInput("a resolution needs a reason", field="reason", value=reason)
    _check_text("reason", reason, limit=MAX_TEXT)
    _check_text("principal", principal, limit=256)
    entries = _entry_ids(entry_ids)
    column, value = scope(topic, prefix)
    if not entries:
        return 0
    status = await conn.execute(
        f"UPDATE {_DEAD_LETTERS} SET state = 'resolved', resolution = $3, resolved_by = $4, "
        f"updated_at = now() WHERE {column} = $1 AND dlq_entry_id = ANY($2) "
        "AND state <> 'resolved'",
        value,
        entries,
        reason,
        principal,
    )
    return int(status.split()[-1])


async def set_state(
    conn: asyncpg.Connection, ids: Sequence[int], state: str, *, expect: Sequence[str]
) -> list[int]:
    """Move the dead letters with these catalog ids to `state` where they are in one of the
    `expect` states (compare-and-set); return the ids that moved, ascending."""
    _check_one_of("state", state, database.DEAD_LETTER_STATES)
    if not expect:
        raise InvalidInput("expect names no state", field="expect", value="")
    for value in expect:
        _check_one_of("expect", value, database.DEAD_LETTER_STATES)
    if not ids:
        return []
    rows = await conn.fetch(
        f"UPDATE {_DEAD_LETTERS} SET state = $2, updated_at = now() "
        "WHERE id = ANY($1::bigint[]) AND state = ANY($3::text[]) RETURNING id",
        list(ids),
        state,
        list(expect),
    )
    return sorted(r["id"] for r in rows)


async def audit_for(
    pool: asyncpg.Pool, target_ids: Sequence[str], *, prefix: str | None = None
) -> list[AuditEntry]:
    """Audit rows naming any of `target_ids`, oldest first (the newest 1000 at most); with
    `prefix`, only those the deployment with that key prefix wrote (and rows that name none)."""
    if not target_ids:
        return []
    rows = await pool.fetch(
        f"SELECT at, principal, action, target_ids, reason, outcome FROM {_AUDIT} "
        "WHERE target_ids && $1::text[] AND ($3::text IS NULL OR "
        "coalesce(detail->>'key_prefix', $3) = $3) ORDER BY id DESC LIMIT $2",
        list(target_ids),
        _AUDIT_LIMIT,
        prefix,
    )
    return [
        AuditEntry(
            at=r["at"],
            principal=r["principal"],
            action=r["action"],
            target_ids=tuple(r["target_ids"]),
            reason=r["reason"],
            outcome=r["outcome"],
        )
        for r in reversed(rows)
    ]
