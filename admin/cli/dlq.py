"""`conveyor dlq`: list, inspect, reprocess, resolve and report dead letters through AdminService.

`--stream` (alias `--topic`) takes a topic (`identity`), the predecessor's form (`identity.dlq`) or
a dead-letter stream key (`conveyor:{identity}:dlq`); all three name topic `identity`.

Exit codes: 0 ok; 1 server unreachable, UNAVAILABLE, DEADLINE_EXCEEDED or another server error
(also a reprocess cancelled at the prompt or interrupted); 2 bad input, checked before any call,
or INVALID_ARGUMENT from the server; 3 NOT_FOUND; 5 UNAUTHENTICATED or PERMISSION_DENIED;
6 FAILED_PRECONDITION. Errors are one line on stderr: `conveyor: error: <code>: <message>`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from admin.cli import reprocessing
from admin.cli.client import (
    EXIT_CODES_HELP,
    AsJson,
    Client,
    Connection,
    with_connection,
)
from admin.cli.filters import (
    ErrorText,
    EventType,
    Group,
    OptionalStream,
    Reason,
    Since,
    StateOption,
    Stream,
    Until,
    build_filter,
    by_id_target,
    check_entry_ids,
    parse_topic,
)
from admin.cli.options import EXIT_USAGE, fail
from admin.cli.output import (
    actions_table,
    counts_table,
    dead_letters_view,
    fingerprints_table,
    histogram,
    iso,
    metadata_table,
    payload_panel,
    print_json,
    to_dict,
)
from conveyor.v1 import admin_pb2

app = typer.Typer(
    help="Dead letters: list, inspect, reprocess (to the failing group only), resolve, report.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)


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
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="Every field (catalog id, full event type, consumer, error, creation time, "
            "reprocessing chain); one block per dead letter when they do not fit the terminal.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters, newest first, a page at a time (all topics without --stream).

    The table shows what picks an entry: entry id, event type (its last part), group, reason,
    attempts, age and state, and the error when the terminal has room; --wide shows every field.
    """
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
        console.print(_nothing_listed(conn, request), highlight=False, markup=False)
    else:
        now = datetime.now(UTC)
        console.print(dead_letters_view(letters, width=console.width, now=now, wide=wide))
    if next_token:
        console.print("more: the next page with the option below, or --all for every page")
        # On a line of its own and never wrapped, so it copies whole whatever the width.
        console.print(f"--page-token {next_token}", style="dim", markup=False, soft_wrap=True)


def _nothing_listed(conn: Connection, request: admin_pb2.ListDeadLettersRequest) -> str:
    """Why `dlq list` shows nothing: the filters, a topic without dead letters, or a name that
    is no topic of this deployment (a typo), told apart so an empty answer is not misread."""
    topic = request.filter.topic
    if not topic:
        return "no dead letters match"
    with Client(conn) as client:
        if request.filter != admin_pb2.DeadLetterFilter(topic=topic):
            whole = admin_pb2.ListDeadLettersRequest(
                filter=admin_pb2.DeadLetterFilter(topic=topic), page_size=1
            )
            any_letter = client.attempt(client.admin.ListDeadLetters, whole)
            if any_letter is None or any_letter.dead_letters:
                return f"no dead letters of topic {topic} match the filters"
        status = client.attempt(client.admin.GetStatus, admin_pb2.GetStatusRequest())
    read = sorted({group.topic for group in status.groups}) if status is not None else []
    if not read or topic in read:  # nothing to check the name against, or a known topic
        return f"no dead letters on topic {topic}"
    return (
        f"no dead letters on topic {topic}, and no consumer group of this deployment reads a "
        f"topic of that name (topics read: {', '.join(read)}): check the name"
    )


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
        topic=by_id_target(stream), entry_id=check_entry_ids([entry_id])[0]
    )
    with Client(conn) as client:
        response = client.call(client.admin.GetDeadLetter, request)
    if as_json:
        print_json(response)
        return
    console = Console()
    console.print(metadata_table(response.dead_letter, response.traceparent))
    console.print(payload_panel(response))
    if response.traceback:
        console.print(Panel(Text(response.traceback), title="traceback", title_align="left"))
    if response.actions:
        console.print(actions_table(response.actions, console.width))


app.command("reprocess", epilog=EXIT_CODES_HELP)(reprocessing.reprocess)


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
    request = admin_pb2.ResolveDeadLettersRequest(
        topic=by_id_target(stream), entry_ids=ids, reason=reason.strip()
    )
    with Client(conn) as client:
        response = client.call(client.admin.ResolveDeadLetters, request)
    if as_json:
        print_json(response)
        return
    console = Console(highlight=False, soft_wrap=True)  # a line per entry, whole when piped
    console.print(
        f"resolved {response.resolved} of {len(ids)} dead letters of topic {topic}", markup=False
    )
    for skip in response.skips:
        console.print(f"  left {skip.entry_id}: {skip.detail}", markup=False)


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
            console.print(counts_table(title, counts, response.total))
    if response.fingerprints:
        console.print(fingerprints_table(response.fingerprints))
    if response.histogram:
        console.print(histogram(response.histogram))
