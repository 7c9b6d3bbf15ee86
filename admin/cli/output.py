"""How the `conveyor` client commands print: JSON for scripts, rich tables and panels for people."""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from admin.cli.tables import add_column, add_row, fitted, lines, list_table, natural_width
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

ERROR_MIN_WIDTH = 16
"""Narrowest error column `dlq list` adds when the terminal has room beside the default ones."""

HISTOGRAM_WIDTH = 40
"""Characters of the longest bar in `dlq report`."""

HOURLY_ROWS_MAX = 48
"""Longer report windows show the histogram by day."""


def dead_letters_view(
    letters: Sequence[Any], *, width: int, now: datetime, wide: bool = False
) -> RenderableType:
    """conveyor.v1.DeadLetter rows in `width` columns, every value on one line: what picks an
    entry (entry id, short type, group, reason, attempts, age, state, and the error when there
    is room). A topic, group or reason all rows share goes to the title; attempts, then age, are
    left out when the rest would not fit, and the rows are shown vertically when even that does
    not fit. With `wide` every field, the error whole (wrapped), vertically when too wide."""
    title = f"{len(letters)} dead letter{'' if len(letters) == 1 else 's'}"
    if wide:
        return fitted(_letters_table(title, _wide_rows(letters), set()), width)
    shared = {
        "topic": {x.topic for x in letters},
        "group": {x.group for x in letters},
        "reason": {reason_name(x.reason) for x in letters},
    }
    left_out = {name for name, values in shared.items() if len(values) == 1}
    if left_out:
        title += ": " + ", ".join(f"{n} {shared[n].pop()}" for n in shared if n in left_out)
    rows = _default_rows(letters, now)
    for drop in (set(), {"tries"}, {"tries", "age"}):
        table = _letters_table(title, rows, left_out | drop)
        spare = width - natural_width(table)
        if spare >= 0:
            break
    room = min(spare - 2, ERROR_WIDTH)  # the error column comes after a two-space gap
    if room < ERROR_MIN_WIDTH:
        return fitted(table, width)
    for row, letter in zip(rows, letters, strict=True):
        row["error"] = _cut(_error_text(letter), room)
    return _letters_table(title, rows, left_out | drop)


_RIGHT = ("id", "tries", "attempts", "age")


def _letters_table(title: str, rows: Sequence[dict[str, str]], left_out: set[str]) -> Table:
    table = list_table(title)
    names = [name for name in (rows[0] if rows else ()) if name not in left_out]
    for name in names:
        add_column(table, name, right=name in _RIGHT, wrap=name == "error")
    for row in rows:
        add_row(table, *(row[name] for name in names))
    return table


def _default_rows(letters: Sequence[Any], now: datetime) -> list[dict[str, str]]:
    return [
        {
            "topic": letter.topic,
            "entry id": letter.entry_id,
            "type": letter.event_type.rsplit(".", 1)[-1],
            "group": letter.group,
            "reason": reason_name(letter.reason),
            "tries": str(letter.attempts),
            "age": age(letter.create_time, now),
            "state": state_name(letter.state),
        }
        for letter in letters
    ]


def _wide_rows(letters: Sequence[Any]) -> list[dict[str, str]]:
    return [
        {
            "id": str(letter.id),
            "topic": letter.topic,
            "entry id": letter.entry_id,
            "event type": letter.event_type,
            "group": letter.group,
            "consumer": letter.consumer,
            "reason": reason_name(letter.reason),
            "attempts": str(letter.attempts),
            "error": _error_text(letter).strip(),  # whole: --wide is where to read it
            "created (UTC)": iso(letter.create_time),
            "state": _state_text(letter),
        }
        for letter in letters
    ]


def age(ts: Timestamp, now: datetime) -> str:
    """How long before `now` `ts` was: `45s`, `12m`, `5h`, `3d`; "" when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    seconds = max(0, int((now - ts.ToDatetime(tzinfo=UTC)).total_seconds()))
    for unit, size, limit in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


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


def actions_table(actions: Iterable[Any], width: int) -> RenderableType:
    """A row per conveyor.v1.AuditRecord, each target entry id on a line of its own; shown
    vertically when it cannot fit `width`."""
    table = list_table("actions")
    for name in ("time (UTC)", "principal", "action", "targets", "outcome", "reason"):
        add_column(table, name, wrap=name == "reason")
    for a in actions:
        add_row(table, iso(a.time), a.principal, a.action, lines(a.target_ids), a.outcome, a.reason)
    return fitted(table, width)


def counts_table(title: str, counts: Iterable[Any], total: int) -> Table:
    table = list_table(title)
    add_column(table, title.removeprefix("by "), wrap=True)
    add_column(table, "count", right=True)
    add_column(table, "share", right=True)
    for item in counts:
        share = f"{item.count / total * 100:.1f} %" if total else ""
        add_row(table, item.key or "(unknown)", str(item.count), share)
    return table


def fingerprints_table(fingerprints: Iterable[Any]) -> Table:
    """A row per conveyor.v1.ErrorFingerprint: the error wraps, counts and times stay whole."""
    table = list_table("top errors")
    add_column(table, "count", right=True)
    add_column(table, "first (UTC)")
    add_column(table, "last (UTC)")
    add_column(table, "error", wrap=True)
    for fp in fingerprints:
        error = f"{fp.error_class}: {fp.message}" if fp.error_class else fp.message
        first, last = _minute(fp.first_seen_time), _minute(fp.last_seen_time)
        add_row(table, str(fp.count), first, last, error)
    return table


def _minute(ts: Timestamp) -> str:
    """`11-29 05:00`: a report's times to the minute, in UTC (the window gives the year)."""
    return iso(ts)[5:16].replace("T", " ")


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
