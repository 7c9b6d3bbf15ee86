"""How the `conveyor` client commands print: JSON for scripts, rich tables and panels for people."""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from conveyor import wire
from conveyor.v1 import admin_pb2


def to_dict(message: Message) -> dict[str, Any]:
    """`message` as a JSON-ready dict: proto field names, every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(data: Any) -> None:
    """Write `data` as indented JSON to stdout (a message is converted with `to_dict`)."""
    if isinstance(data, Message):
        data = to_dict(data)
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def iso(ts: Timestamp, *, millis: bool = False) -> str:
    """A timestamp in UTC ISO 8601 (`2026-11-29T05:00:00Z`); "" when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    moment = ts.ToDatetime(tzinfo=UTC)
    text = moment.isoformat(timespec="milliseconds" if millis else "seconds")
    return text.replace("+00:00", "Z")


ERROR_WIDTH = 60
"""Characters of an error shown in `dlq list`."""

HISTOGRAM_WIDTH = 40
"""Characters of the longest bar in `dlq report`."""

HOURLY_ROWS_MAX = 48
"""Longer report windows show the histogram by day."""


def dead_letters_table(letters: Sequence[Any], *, with_topic: bool) -> Table:
    """A row per conveyor.v1.DeadLetter, its error cut to ERROR_WIDTH."""
    table = Table(title=f"{len(letters)} dead letters", title_justify="left")
    columns = ["id", "entry id", "event type", "group", "reason", "attempts", "error"]
    columns = (["topic"] if with_topic else []) + [*columns, "created (UTC)", "state"]
    for name in columns:
        # On a narrow terminal text wraps, but entry ids and times stay whole.
        table.add_column(
            name,
            justify="right" if name in ("id", "attempts") else "left",
            no_wrap=name in ("entry id", "created (UTC)"),
            overflow="fold",
        )
    for letter in letters:
        row = [
            str(letter.id),
            letter.entry_id,
            letter.event_type,
            letter.group,
            reason_name(letter.reason),
            str(letter.attempts),
            _cut(_error_text(letter), ERROR_WIDTH),
            iso(letter.create_time),
            _state_text(letter),
        ]
        add_row(table, *([letter.topic] if with_topic else []), *row)
    return table


def metadata_table(letter: Any, traceparent: str) -> Table:
    table = Table(show_header=False, title=f"dead letter {letter.entry_id}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = {
        "id": str(letter.id),
        "topic": letter.topic,
        "entry id": letter.entry_id,
        "state": state_name(letter.state),
        "event id": letter.event_id,
        "event type": letter.event_type,
        "reason": reason_name(letter.reason),
        "group": letter.group,
        "consumer": letter.consumer,
        "attempts": str(letter.attempts),
        "error class": letter.error_class,
        "error": letter.error_message,
        "source stream": letter.source_stream,
        "source entry id": letter.source_entry_id,
        "first failed (UTC)": iso(letter.first_failed_time, millis=True),
        "last failed (UTC)": iso(letter.last_failed_time, millis=True),
        "created (UTC)": iso(letter.create_time, millis=True),
        "resolution": letter.resolution,
        "resolved by": letter.resolved_by,
        "reprocess of": letter.retry_of_entry_id,
        "failed again as": letter.retried_as_entry_id,
        "traceparent": traceparent,
    }
    for name, value in rows.items():
        if value:
            add_row(table, name, value)
    return table


def payload_panel(response: Any) -> Panel:
    type_url = response.payload_type_url or "unknown type"
    body: RenderableType = Text("(empty)")
    if response.payload_json:
        try:
            body = JSON(response.payload_json)
        except ValueError:
            body = Text(response.payload_json)
    elif response.payload:
        body = Text(base64.b64encode(response.payload).decode("ascii"))
        type_url = f"base64, {type_url}"
    return Panel(body, title=f"payload ({type_url})", title_align="left")


def actions_table(actions: Iterable[Any]) -> Table:
    """A row per conveyor.v1.AuditRecord."""
    table = new_table(
        "actions", "time (UTC)", "principal", "action", "targets", "reason", "outcome"
    )
    for a in actions:
        add_row(
            table, iso(a.time), a.principal, a.action, ", ".join(a.target_ids), a.reason, a.outcome
        )
    return table


def counts_table(title: str, counts: Iterable[Any], total: int) -> Table:
    table = new_table(title, title.removeprefix("by "), "count", "share", right=("count", "share"))
    for item in counts:
        share = f"{item.count / total * 100:.1f} %" if total else ""
        add_row(table, item.key or "(unknown)", str(item.count), share)
    return table


def fingerprints_table(fingerprints: Iterable[Any]) -> Table:
    columns = ("count", "error class", "message", "first seen (UTC)", "last seen (UTC)")
    table = new_table("top errors", *columns, right=("count",))
    for fp in fingerprints:
        add_row(
            table,
            str(fp.count),
            fp.error_class,
            fp.message,
            iso(fp.first_seen_time),
            iso(fp.last_seen_time),
        )
    return table


def histogram(hours: Sequence[Any]) -> Table:
    """A bar per hour; per day when the window is long."""
    by_day = len(hours) > HOURLY_ROWS_MAX
    buckets: dict[str, int] = {}
    for hour in hours:
        label = iso(hour.hour_time)
        label = label[:10] if by_day else label[:16] + "Z"
        buckets[label] = buckets.get(label, 0) + hour.count
    peak = max(buckets.values(), default=0)
    table = Table(title="per day" if by_day else "per hour", title_justify="left", box=None)
    table.add_column("day (UTC)" if by_day else "hour (UTC)")
    table.add_column("count", justify="right")
    table.add_column("")
    for label, count in buckets.items():
        width = math.ceil(count / peak * HISTOGRAM_WIDTH) if peak else 0
        add_row(table, label, str(count), Text("█" * width, style="red"))
    return table


def add_row(table: Table, *values: str | Text) -> None:
    """Add a row of plain text: what the server sent is never read as rich markup."""
    table.add_row(*(value if isinstance(value, Text) else Text(value) for value in values))


def new_table(title: str, *columns: str, right: Iterable[str] = ()) -> Table:
    """A table titled `title` with `columns`; those in `right` are right-aligned."""
    table = Table(title=title, title_justify="left")
    aligned = set(right)
    for name in columns:
        table.add_column(name, justify="right" if name in aligned else "left", overflow="fold")
    return table


def reason_name(value: int) -> str:
    """Wire name of a DeadLetterReason value; the number when this client does not know it."""
    try:
        return wire.reason_name(value) if value else ""
    except ValueError:
        return str(value)


def state_name(value: int) -> str:
    """`open`, `reprocessing`, ... for a DeadLetterState value."""
    try:
        return admin_pb2.DeadLetterState.Name(value).removeprefix("DEAD_LETTER_STATE_").lower()
    except ValueError:
        return str(value)


def _state_text(letter: Any) -> str:
    """The state, with the reprocessing chain: `reprocessed -> 1700000000001-0` when the
    reprocess failed again as that dead letter, `open (retry of 1700000000000-0)`."""
    text = state_name(letter.state)
    if letter.retried_as_entry_id:
        text += f" -> {letter.retried_as_entry_id}"
    if letter.retry_of_entry_id:
        text += f" (retry of {letter.retry_of_entry_id})"
    return text


def _error_text(letter: Any) -> str:
    if letter.error_class and letter.error_message:
        return f"{letter.error_class}: {letter.error_message}"
    return str(letter.error_class or letter.error_message)


def _cut(text: str, width: int) -> str:
    """The first line of `text` in at most `width` characters, with … when anything was cut."""
    text = text.strip()
    line = text.split("\n", 1)[0].rstrip()
    if len(line) > width or line != text:
        return line[: width - 1] + "…"
    return line
