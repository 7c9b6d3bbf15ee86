"""`conveyor dlq`: list, inspect, reprocess, resolve and report dead letters through AdminService.

`--stream` (alias `--topic`) takes a topic (`identity`), the predecessor's form (`identity.dlq`) or
a dead-letter stream key (`conveyor:{identity}:dlq`); all three name topic `identity`.

Exit codes: 0 ok; 1 server unreachable, UNAVAILABLE, DEADLINE_EXCEEDED or another server error
(also a reprocess cancelled at the prompt or interrupted); 2 bad input, checked before any call,
or INVALID_ARGUMENT from the server; 3 NOT_FOUND; 5 UNAUTHENTICATED or PERMISSION_DENIED;
6 FAILED_PRECONDITION. Errors are one line on stderr: `conveyor: error: <code>: <message>`.
"""

from __future__ import annotations

import base64
import enum
import math
import re
import sys
import uuid
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from admin.cli.client import (
    EXIT_CODES_HELP,
    AsJson,
    Client,
    Connection,
    iso,
    print_json,
    to_dict,
    with_connection,
)
from admin.cli.durations import parse_since
from admin.cli.options import EXIT_FAILURE, EXIT_USAGE, fail
from conveyor import wire
from conveyor.v1 import admin_pb2

app = typer.Typer(
    help="Dead letters: list, inspect, reprocess (to the failing group only), resolve, report.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)

ERROR_WIDTH = 60
"""Characters of an error shown in `dlq list`."""
HISTOGRAM_WIDTH = 40
"""Characters of the longest bar in `dlq report`."""
HOURLY_ROWS_MAX = 48
"""Longer report windows show the histogram by day."""

ENTRY_ID_EXAMPLE = "1700000000000-0"
_KEY_RE = re.compile(r".+:\{(?P<topic>[^{}]+)\}:dlq")
_ENTRY_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")


class State(enum.StrEnum):
    """Where a dead letter is in its life (`--state`)."""

    OPEN = "open"
    REPROCESSING = "reprocessing"
    REPROCESSED = "reprocessed"
    RESOLVED = "resolved"


_STREAM_HELP = (
    "Topic, or its dead-letter stream: identity, identity.dlq or conveyor:{identity}:dlq."
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


@app.command("list", epilog=EXIT_CODES_HELP)
@with_connection
def list_dead_letters(
    conn: Connection,
    stream: OptionalStream = None,
    count: Annotated[int, typer.Option(min=1, max=1000, help="Dead letters per page.")] = 20,
    event_type: EventType = None,
    reason: Reason = None,
    group: Group = None,
    error: ErrorText = None,
    since: Since = None,
    until: Until = None,
    state: StateOption = None,
    page_token: Annotated[
        str | None, typer.Option(help="Page to show (printed after one).")
    ] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters, newest first, a page at a time (all topics without --stream)."""
    topic = parse_topic(stream) if stream is not None else ""
    request = admin_pb2.ListDeadLettersRequest(
        filter=build_filter(topic, event_type, reason, group, error, since, until, state),
        page_size=count,
        page_token=page_token or "",
    )
    letters, next_token = _fetch_pages(conn, request, all_pages)
    if as_json:
        items = [to_dict(letter) for letter in letters]
        print_json({"dead_letters": items, "next_page_token": next_token})
        return
    console = Console()
    if not letters:
        console.print("no dead letters match")
    else:
        console.print(dead_letters_table(letters, with_topic=not topic))
    if next_token:
        hint = f"more: --page-token {next_token}  (or --all for every page)"
        console.print(hint, style="dim", markup=False)


def _fetch_pages(
    conn: Connection, request: admin_pb2.ListDeadLettersRequest, all_pages: bool
) -> tuple[list[Any], str]:
    letters: list[Any] = []
    seen: set[str] = set()
    with Client(conn) as client:
        while True:
            response = client.call(client.admin.ListDeadLetters, request)
            letters.extend(response.dead_letters)
            token = response.next_page_token
            # A token seen before would loop forever: stop and show it instead.
            if not all_pages or not token or token in seen:
                return letters, token
            seen.add(token)
            request.page_token = token


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


@app.command(epilog=EXIT_CODES_HELP)
@with_connection
def inspect(
    conn: Connection,
    stream: Stream,
    entry_id: Annotated[str, typer.Option("--id", help="Entry id, e.g. 1700000000000-0.")],
    as_json: AsJson = False,
) -> None:
    """One dead letter: metadata, payload, traceback and the actions taken on it."""
    request = admin_pb2.GetDeadLetterRequest(
        topic=parse_topic(stream), entry_id=check_entry_ids([entry_id])[0]
    )
    with Client(conn) as client:
        response = client.call(client.admin.GetDeadLetter, request)
    if as_json:
        print_json(response)
        return
    console = Console()
    console.print(_metadata_table(response.dead_letter, response.traceparent))
    console.print(_payload_panel(response))
    if response.traceback:
        console.print(Panel(Text(response.traceback), title="traceback", title_align="left"))
    if response.actions:
        console.print(actions_table(response.actions))


def _metadata_table(letter: Any, traceparent: str) -> Table:
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


def _payload_panel(response: Any) -> Panel:
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
        add_row(table, iso(a.time), a.principal, a.action, ", ".join(a.target_ids), a.reason,
                      a.outcome)  # fmt: skip
    return table


@app.command(epilog=EXIT_CODES_HELP)
@with_connection
def reprocess(
    conn: Connection,
    stream: Stream,
    entry_ids: Annotated[
        list[str] | None, typer.Option("--id", help="Entry id to reprocess; repeatable.")
    ] = None,
    event_type: EventType = None,
    reason: Reason = None,
    group: Group = None,
    error: ErrorText = None,
    since: Since = None,
    until: Until = None,
    state: StateOption = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be requeued.")] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Repeat a reprocess safely with its key. Default: a new one, printed."),
    ] = None,
    rate_limit: Annotated[
        float, typer.Option(min=0.0, help="Requeues per second; 0 for no limit.")
    ] = 0.0,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Reprocess by filter unasked.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final counts as JSON.")
    ] = False,
) -> None:
    """Re-deliver dead letters, by --id or by filter, to the group that failed each one.

    Without --id every dead letter of the topic matching the filters is reprocessed, after a
    confirmation (skipped with --yes; refused without --yes when stdin is not a terminal).
    """
    topic = parse_topic(stream)
    ids = check_entry_ids(entry_ids or [])
    filters = (event_type, reason, group, error, since, until, state)
    if ids and any(value is not None for value in filters):
        fail("use either --id or filter options, not both", EXIT_USAGE)
    if idempotency_key is not None and not idempotency_key.strip():
        fail("--idempotency-key must not be blank", EXIT_USAGE)
    key = idempotency_key or str(uuid.uuid4())
    request = admin_pb2.ReprocessDeadLettersRequest(
        topic=topic, entry_ids=ids, dry_run=dry_run, idempotency_key=key, rate_limit=rate_limit
    )
    if not ids:
        request.filter.CopyFrom(build_filter(topic, *filters))
    with Client(conn) as client:
        if not ids and not dry_run and not yes and not _confirm(client, request):
            if as_json:
                _print_counts(admin_pb2.ReprocessDeadLettersResponse(finished=True), request, True)
            else:
                Console().print(f"no dead letters of topic {topic} match: nothing to reprocess")
            return
        if idempotency_key is None:
            note = f"idempotency key: {key}  (repeat with --idempotency-key {key} to retry safely)"
            Console(stderr=True).print(note, highlight=False)
        last = _run_reprocess(client, request, quiet=as_json)
    _print_counts(last, request, as_json)


def _confirm(client: Client, request: admin_pb2.ReprocessDeadLettersRequest) -> bool:
    """Ask before a filter-based reprocess; False when nothing matches."""
    if not _stdin_is_tty():
        fail("reprocessing by filter needs --yes when stdin is not a terminal "
             "(see what matches with --dry-run first)", EXIT_USAGE)  # fmt: skip
    preview = admin_pb2.ReprocessDeadLettersRequest()
    preview.CopyFrom(request)
    preview.dry_run = True
    preview.idempotency_key = str(uuid.uuid4())  # the real run must not replay the preview
    total = 0
    for response in client.stream(client.admin.ReprocessDeadLetters, preview, idle=_idle(client)):
        total = response.total
    if total == 0:
        return False
    question = f"Reprocess {total} dead letters of topic {request.topic} matching the filter?"
    if not typer.confirm(question, default=False, err=True):
        fail("cancelled: nothing was reprocessed", EXIT_FAILURE)
    return True


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def _idle(client: Client, rate_limit: float = 0.0) -> float:
    """Seconds to wait for the next progress message; a slow rate limit spaces them out."""
    return client.conn.timeout + (2.0 / rate_limit if rate_limit > 0 else 0.0)


def _run_reprocess(
    client: Client, request: admin_pb2.ReprocessDeadLettersRequest, *, quiet: bool
) -> Any:
    last: Any = None
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("dry run" if request.dry_run else "reprocess"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("requeued {task.fields[requeued]}, duplicates {task.fields[duplicates]}, "
                   "skipped {task.fields[skipped]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,  # the summary follows; an error line stays the last one
    )  # fmt: skip
    idle = _idle(client, request.rate_limit)
    try:
        with progress:
            task = progress.add_task("reprocess", total=None, requeued=0, duplicates=0, skipped=0)
            for last in client.stream(client.admin.ReprocessDeadLetters, request, idle=idle):
                progress.update(
                    task, completed=last.done, total=last.total or None, requeued=last.requeued,
                    duplicates=last.duplicates, skipped=last.skipped,
                )  # fmt: skip
    except KeyboardInterrupt:
        fail(f"interrupted: repeat with --idempotency-key {request.idempotency_key} to finish "
             "without requeuing anything twice")  # fmt: skip
    if last is None or not last.finished:
        fail(f"the server stopped before reporting the end: repeat with --idempotency-key "
             f"{request.idempotency_key} to finish without requeuing anything twice")  # fmt: skip
    return last


def _print_counts(last: Any, request: admin_pb2.ReprocessDeadLettersRequest, as_json: bool) -> None:
    if as_json:
        counts = to_dict(last)
        counts |= {"topic": request.topic, "dry_run": request.dry_run,
                   "idempotency_key": request.idempotency_key}  # fmt: skip
        print_json(counts)
        return
    verb = "dry run: would requeue" if request.dry_run else "requeued"
    Console().print(
        f"{verb} {last.requeued}, duplicates {last.duplicates}, skipped {last.skipped} "
        f"({last.done} of {last.total} dead letters of topic {request.topic})",
        highlight=False,
    )


@app.command(epilog=EXIT_CODES_HELP)
@with_connection
def resolve(
    conn: Connection,
    stream: Stream,
    entry_ids: Annotated[
        list[str] | None, typer.Option("--id", help="Entry id to resolve; repeatable (required).")
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why no reprocess is needed; audited (required).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the count as JSON.")] = False,
) -> None:
    """Mark dead letters resolved: they need no reprocessing, for the reason given."""
    topic = parse_topic(stream)
    ids = check_entry_ids(entry_ids or [])
    if not ids:
        fail("give the dead letters to resolve with --id (repeatable)", EXIT_USAGE)
    if reason is None or not reason.strip():
        fail("--reason is required: say why these dead letters need no reprocessing", EXIT_USAGE)
    request = admin_pb2.ResolveDeadLettersRequest(topic=topic, entry_ids=ids, reason=reason.strip())
    with Client(conn) as client:
        response = client.call(client.admin.ResolveDeadLetters, request)
    if as_json:
        print_json(response)
        return
    Console().print(f"resolved {response.resolved} of {len(ids)} dead letters of topic {topic}")


@app.command(epilog=EXIT_CODES_HELP)
@with_connection
def report(
    conn: Connection,
    stream: Stream,
    hours: Annotated[int, typer.Option(min=1, max=720, help="Window length in hours.")] = 24,
    as_json: AsJson = False,
) -> None:
    """Dead letters of the last --hours: counts, top errors and an hourly histogram."""
    request = admin_pb2.GetDeadLetterReportRequest(topic=parse_topic(stream), hours=hours)
    with Client(conn) as client:
        response = client.call(client.admin.GetDeadLetterReport, request)
    if as_json:
        print_json(response)
        return
    console = Console()
    console.print(
        f"[bold]{response.total}[/] dead letters in topic {request.topic} from "
        f"{iso(response.window_start_time)} to {iso(response.window_end_time)}"
    )
    if response.success_rate > 0:
        console.print(f"success rate: {response.success_rate * 100:.2f} %")
    for title, counts in (
        ("by event type", response.by_event_type),
        ("by reason", response.by_reason),
        ("by group", response.by_group),
    ):
        if counts:
            console.print(_counts_table(title, counts, response.total))
    if response.fingerprints:
        console.print(_fingerprints_table(response.fingerprints))
    if response.histogram:
        console.print(_histogram(response.histogram))


def _counts_table(title: str, counts: Iterable[Any], total: int) -> Table:
    table = new_table(title, title.removeprefix("by "), "count", "share", right=("count", "share"))
    for item in counts:
        share = f"{item.count / total * 100:.1f} %" if total else ""
        add_row(table, item.key or "(unknown)", str(item.count), share)
    return table


def _fingerprints_table(fingerprints: Iterable[Any]) -> Table:
    columns = ("count", "error class", "message", "first seen (UTC)", "last seen (UTC)")
    table = new_table("top errors", *columns, right=("count",))
    for fp in fingerprints:
        add_row(table, str(fp.count), fp.error_class, fp.message, iso(fp.first_seen_time),
                      iso(fp.last_seen_time))  # fmt: skip
    return table


def _histogram(hours: Sequence[Any]) -> Table:
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


def parse_topic(text: str) -> str:
    """The topic `--stream` names: `identity`, `identity.dlq` or `conveyor:{identity}:dlq`."""
    text = text.strip()
    if "{" in text or "}" in text:
        match = _KEY_RE.fullmatch(text)
        if match is None:
            fail(f"invalid --stream {text!r}: a dead-letter stream key looks like "
                 "conveyor:{identity}:dlq", EXIT_USAGE)  # fmt: skip
        text = match["topic"]
    else:
        text = text.removesuffix(".dlq")
    try:
        return wire.validate_topic(text)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def check_entry_ids(ids: Sequence[str]) -> list[str]:
    """`ids` stripped, each a stream entry id; exits 2 naming the first that is not."""
    cleaned = [entry_id.strip() for entry_id in ids]
    for entry_id in cleaned:
        if not _ENTRY_ID_RE.fullmatch(entry_id):
            fail(
                f"invalid --id {entry_id!r}: an entry id looks like {ENTRY_ID_EXAMPLE}", EXIT_USAGE
            )
    return cleaned


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
