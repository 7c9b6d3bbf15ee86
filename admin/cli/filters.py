"""Options that select dead letters (`--stream`, `--id`, filters) and their checks, shared by
the `conveyor dlq` commands."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Annotated

import typer

from admin.cli.durations import parse_since
from admin.cli.options import EXIT_USAGE, fail
from conveyor import entry_ids, wire
from conveyor.v1 import admin_pb2

_KEY_RE = re.compile(r".+:\{[^{}]+\}:dlq")


class State(enum.StrEnum):
    """Where a dead letter is in its life (`--state`)."""

    OPEN = "open"
    REPROCESSING = "reprocessing"
    REPROCESSED = "reprocessed"
    RESOLVED = "resolved"


_STREAM_HELP = (
    "Topic, or its dead-letter stream: identity, identity.dlq or conveyor:{identity}:dlq (a "
    "partition's, conveyor:{orders:3}:dlq, names its topic; with --id, only that stream's dead "
    "letter)."
)

Stream = Annotated[str, typer.Option("--stream", "--topic", help=_STREAM_HELP)]

OptionalStream = Annotated[str | None, typer.Option("--stream", "--topic", help=_STREAM_HELP)]

EventType = Annotated[str | None, typer.Option(help="Only this event type.")]

Reason = Annotated[str | None, typer.Option(help=f"Only this reason: {', '.join(wire.REASONS)}.")]

Group = Annotated[str | None, typer.Option(help="Only dead letters of this consumer group.")]

ErrorText = Annotated[str | None, typer.Option("--error", help="Only errors containing this text.")]

Since = Annotated[str | None, typer.Option(help="Created at or after: ISO 8601 or e.g. 2h ago.")]

Until = Annotated[str | None, typer.Option(help="Created at or before: ISO 8601 or e.g. 1h ago.")]

StateOption = Annotated[State | None, typer.Option("--state", help="Only dead letters in state.")]


def parse_topic(text: str) -> str:
    """The topic `--stream` names: `identity`, `identity.dlq`, `conveyor:{identity}:dlq` or a
    partition's `conveyor:{orders:3}:dlq` (its topic: dead letters are kept by topic)."""
    text = text.strip()
    if "{" in text or "}" in text:
        tag = wire.parse_tag(text) if _KEY_RE.fullmatch(text) else None
        if tag is None or not text.endswith("{" + _tag(tag) + "}:dlq"):
            fail(
                f"invalid --stream {text!r}: a dead-letter stream key looks like "
                "conveyor:{identity}:dlq, or conveyor:{orders:3}:dlq for a partition",
                EXIT_USAGE,
            )
        text = tag[0]
    else:
        text = text.removesuffix(".dlq")
    try:
        return wire.validate_topic(text)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def by_id_target(text: str) -> str:
    """What an `--id` request names as its topic: the topic `--stream` names, or the
    dead-letter stream key itself when `--stream` is one (`conveyor:{orders:3}:dlq`), so the
    server looks only there; two partitions' dead letters can share an entry id."""
    topic = parse_topic(text)
    text = text.strip()
    return text if "{" in text else topic


def _tag(tag: tuple[str, int | None]) -> str:
    topic, partition = tag
    return topic if partition is None else f"{topic}{wire.PARTITION_SEPARATOR}{partition}"


def check_entry_ids(ids: Sequence[str]) -> list[str]:
    """`ids` stripped, each a stream entry id in normal form; exits 2 naming the first that is
    not one by the rule of `conveyor.entry_ids.EntryId.parse_strict`."""
    checked = []
    for given in ids:
        try:
            checked.append(str(entry_ids.EntryId.parse_strict(given.strip())))
        except ValueError:
            fail(
                f"invalid --id {given.strip()!r}: an entry id looks like {entry_ids.EXAMPLE}",
                EXIT_USAGE,
            )
    return checked


def build_filter(
    topic: str,
    event_type: str | None,
    reason: str | None,
    group: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
    state: State | None,
) -> admin_pb2.DeadLetterFilter:
    """The DeadLetterFilter of the filter options; exits 2 on a bad reason or time."""
    result = admin_pb2.DeadLetterFilter(
        topic=topic, event_type=event_type or "", group=group or "", error_contains=error or ""
    )
    if reason is not None:
        try:
            # wire.reason_value returns a plain int, valid for the enum field.
            result.reason = wire.reason_value(reason.strip())  # type: ignore[assignment]
        except ValueError as exc:
            fail(f"invalid --reason: {exc}", EXIT_USAGE)
    for flag, text, field in (("--since", since, result.since), ("--until", until, result.until)):
        if text is not None:
            try:
                field.FromDatetime(parse_since(text))
            except ValueError as exc:
                fail(f"invalid {flag}: {exc}", EXIT_USAGE)
    if state is not None:
        value = admin_pb2.DeadLetterState.Value(f"DEAD_LETTER_STATE_{state.value.upper()}")
        result.state = value  # type: ignore[assignment]  # Value() is typed as a plain int
    return result
