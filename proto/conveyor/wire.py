"""Redis-side conventions: stream key names, entry field layout, topic names, size cap."""

from __future__ import annotations

import re
import zlib
from typing import Final

from conveyor.v1 import dead_letter_pb2

LAYOUT_VERSION: Final = b"1"
"""Version of the entry field layout below; readers accept entries of any version they know."""

# Entry fields of an event in a topic stream. Readers ignore fields they do not know.
F_VERSION: Final = b"v"
F_EVENT_ID: Final = b"id"
F_EVENT_TYPE: Final = b"type"
F_AGGREGATE_ID: Final = b"agg"
F_TRACEPARENT: Final = b"tp"
F_EVENT: Final = b"ev"
"""The serialized conveyor.v1.Event."""

REQUIRED_FIELDS: Final = (F_EVENT_ID, F_EVENT)
"""An entry missing one of these is a dead letter."""

# Fields a dead-letter entry adds to the original entry's fields, which it keeps verbatim.
DL_SOURCE_STREAM: Final = b"dl.stream"
DL_SOURCE_ENTRY: Final = b"dl.entry"
DL_GROUP: Final = b"dl.group"
DL_CONSUMER: Final = b"dl.consumer"
DL_ATTEMPTS: Final = b"dl.attempts"
DL_REASON: Final = b"dl.reason"
"""Wire name of the DeadLetterReason, e.g. b"max_attempts"."""
DL_ERROR_CLASS: Final = b"dl.error_class"
DL_ERROR: Final = b"dl.error"
DL_TRACEBACK: Final = b"dl.traceback"
DL_FIRST_FAILED: Final = b"dl.first_failed"
"""Unix time in milliseconds, as text."""
DL_LAST_FAILED: Final = b"dl.last_failed"
DL_TRACEPARENT: Final = b"dl.traceparent"
"""Trace context of the dead-lettering span (the original's stays in `tp`)."""
DL_FIELDS: Final = (
    DL_SOURCE_STREAM,
    DL_SOURCE_ENTRY,
    DL_GROUP,
    DL_CONSUMER,
    DL_ATTEMPTS,
    DL_REASON,
    DL_ERROR_CLASS,
    DL_ERROR,
    DL_TRACEBACK,
    DL_FIRST_FAILED,
    DL_LAST_FAILED,
    DL_TRACEPARENT,
)

# Fields a retry-stream entry adds to the original entry's fields (reprocessing a dead letter).
RT_DEAD_LETTER: Final = b"rt.dead_letter"
"""Entry id, in the dead-letter stream, of the dead letter being reprocessed."""
RT_TRACEPARENT: Final = b"rt.traceparent"
"""The dead letter's DL_TRACEPARENT: the reprocess starts a new trace linked to that span."""

MAX_EVENT_BYTES: Final = 1024 * 1024
"""Default cap on a serialized Event, enforced by `enqueue` and again by consumers."""

DEFAULT_PREFIX: Final = "conveyor"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"

_TOPIC_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def validate_topic(topic: str) -> str:
    """Return `topic` if it is a valid topic name, else raise ValueError saying what is allowed."""
    if not _TOPIC_RE.fullmatch(topic):
        raise ValueError(
            f"invalid topic {topic!r}: use 1-100 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return topic


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")


def validate_name(kind: str, name: str) -> str:
    """Return `name` if it can name a consumer group or consumer, else raise ValueError.

    Names become part of Redis keys (the retry stream), so braces, glob characters, whitespace
    and control characters are refused.
    """
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1-100 characters of A-Z, a-z, 0-9, '.', '_', "
            "':', '@' and '-', starting with a letter or digit"
        )
    return name


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it can start Redis key names, else raise ValueError."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"invalid key prefix {prefix!r}: use 1-64 characters of A-Z, a-z, 0-9, '.', '_', ':', "
            "'-', without braces"
        )
    return prefix


PARTITION_SEPARATOR: Final = ":"
"""Between a topic and a partition number in a partitioned topic's hash tag: `{orders:3}`. Topic
names cannot hold it, so no partition's keys are another topic's."""
MAX_PARTITIONS: Final = 1024


def partition_of(aggregate_id: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) events of `aggregate_id` go to: CRC-32 (IEEE, as zlib
    and most languages' standard libraries compute it) of the id's UTF-8 bytes, modulo the count.
    Every event of one aggregate lands in one partition while the count stays the same."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be 1-{MAX_PARTITIONS}, not {partitions}")
    return zlib.crc32(aggregate_id.encode()) % partitions


class Keys:
    """Redis key names of one topic, or of one partition of a partitioned topic. All share one
    hash tag (`{topic}`, or `{topic:N}` for partition N), so one slot holds them."""

    __slots__ = ("_retry_prefix", "dlq", "events", "partition", "topic")

    def __init__(
        self, topic: str, prefix: str = DEFAULT_PREFIX, partition: int | None = None
    ) -> None:
        self.topic = validate_topic(topic)
        self.partition = partition
        """None for an unpartitioned topic."""
        if partition is None:
            tag = topic
        elif 0 <= partition < MAX_PARTITIONS:
            tag = f"{topic}{PARTITION_SEPARATOR}{partition}"
        else:
            raise ValueError(f"partition must be 0-{MAX_PARTITIONS - 1}, not {partition}")
        base = f"{validate_prefix(prefix)}:{{{tag}}}"
        self.events = f"{base}:events"
        """The topic's (partition's) event stream."""
        self.dlq = f"{base}:dlq"
        """The topic's (partition's) dead-letter stream."""
        self._retry_prefix = f"{base}:retry:"

    def retry(self, group: str) -> str:
        """The retry stream that re-delivers events to one consumer group only."""
        return self._retry_prefix + group


def topic_keys(
    topic: str, prefix: str = DEFAULT_PREFIX, partitions: int | None = None
) -> list[Keys]:
    """Keys of every stream of a topic: one for an unpartitioned topic (`partitions` None), one
    per partition otherwise."""
    if partitions is None:
        return [Keys(topic, prefix)]
    return [Keys(topic, prefix, p) for p in range(partitions)]


_TAG_RE = re.compile(r"\{(?P<topic>[a-z0-9][a-z0-9._-]{0,99})(?::(?P<partition>[0-9]{1,4}))?\}")


def parse_tag(key: str) -> tuple[str, int | None] | None:
    """(topic, partition or None) of a Conveyor stream key, None when `key` has no such tag."""
    found = _TAG_RE.search(key)
    if found is None:
        return None
    part = found["partition"]
    return found["topic"], None if part is None else int(part)


def reason_name(reason: int) -> str:
    """Wire name of a DeadLetterReason: DEAD_LETTER_REASON_MAX_ATTEMPTS -> max_attempts."""
    full = dead_letter_pb2.DeadLetterReason.Name(reason)
    return full.removeprefix("DEAD_LETTER_REASON_").lower()


def reason_value(name: str) -> int:
    """DeadLetterReason value of a wire name; ValueError for a name that is not one."""
    try:
        return dead_letter_pb2.DeadLetterReason.Value("DEAD_LETTER_REASON_" + name.upper())
    except ValueError:
        raise ValueError(
            f"unknown dead-letter reason {name!r}; known: {', '.join(REASONS)}"
        ) from None


REASONS: Final = tuple(reason_name(v) for v in dead_letter_pb2.DeadLetterReason.values() if v != 0)
"""Wire names of every dead-letter reason, in enum order."""
