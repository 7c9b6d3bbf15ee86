"""`conveyor dlq reprocess`: requeue dead letters to their failing group, with progress."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from admin.cli.client import (
    Client,
    Connection,
    with_connection,
)
from admin.cli.filters import (
    ErrorText,
    EventType,
    Group,
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
from admin.cli.options import EXIT_FAILURE, EXIT_USAGE, fail
from admin.cli.output import print_json, to_dict
from conveyor.v1 import admin_pb2


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
        topic=by_id_target(stream) if ids else topic,
        entry_ids=ids,
        dry_run=dry_run,
        idempotency_key=key,
        rate_limit=rate_limit,
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
        last = _run_reprocess(client, request, quiet=as_json)
    _print_counts(last, request, as_json)


def _confirm(client: Client, request: admin_pb2.ReprocessDeadLettersRequest) -> bool:
    """Ask before a filter-based reprocess; False when nothing matches."""
    if not _stdin_is_tty():
        fail(
            "reprocessing by filter needs --yes when stdin is not a terminal "
            "(see what matches with --dry-run first)",
            EXIT_USAGE,
        )
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
        TextColumn(
            "requeued {task.fields[requeued]}, duplicates {task.fields[duplicates]}, "
            "skipped {task.fields[skipped]}"
        ),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,  # the summary follows; an error line stays the last one
    )
    idle = _idle(client, request.rate_limit)
    try:
        with progress:
            task = progress.add_task("reprocess", total=None, requeued=0, duplicates=0, skipped=0)
            for last in client.stream(client.admin.ReprocessDeadLetters, request, idle=idle):
                progress.update(
                    task,
                    completed=last.done,
                    total=last.total or None,
                    requeued=last.requeued,
                    duplicates=last.duplicates,
                    skipped=last.skipped,
                )
    except typer.Exit as exc:
        if exc.exit_code == EXIT_FAILURE:  # no answer (or a server error): a retry may help
            print(
                f"(repeat with --idempotency-key {request.idempotency_key} to retry without "
                "requeuing anything twice)",
                file=sys.stderr,
            )
        raise
    except KeyboardInterrupt:
        fail(
            f"interrupted: repeat with --idempotency-key {request.idempotency_key} to finish "
            "without requeuing anything twice"
        )
    if last is None or not last.finished:
        fail(
            f"the server stopped before reporting the end: repeat with --idempotency-key "
            f"{request.idempotency_key} to finish without requeuing anything twice"
        )
    return last


def _print_counts(last: Any, request: admin_pb2.ReprocessDeadLettersRequest, as_json: bool) -> None:
    if as_json:
        counts = to_dict(last)
        counts |= {
            "topic": parse_topic(request.topic),
            "dry_run": request.dry_run,
            "idempotency_key": request.idempotency_key,
        }
        print_json(counts)
        return
    verb = "dry run: would requeue" if request.dry_run else "requeued"
    console = Console(highlight=False, soft_wrap=True)  # a line per entry, whole when piped
    console.print(
        f"{verb} {last.requeued}, duplicates {last.duplicates}, skipped {last.skipped} "
        f"({last.done} of {last.total} dead letters of topic {parse_topic(request.topic)})",
        markup=False,
    )
    if last.replayed:
        console.print(
            f"(the outcome of the first call with idempotency key {request.idempotency_key}: "
            "this one requeued nothing)",
            markup=False,
        )
    for skip in last.skips:
        console.print(f"  skipped {skip.entry_id}: {_skip_text(skip)}", markup=False)
    unexplained = last.skipped - len(last.skips)
    if unexplained > 0 and not last.skips:
        # An outcome stored by a server that did not record why it skipped each entry.
        console.print(f"  skipped {unexplained} (reasons not recorded)", markup=False)
    elif unexplained > 0:
        console.print(f"  and {unexplained} more skipped", markup=False)


def _skip_text(skip: Any) -> str:
    """Why a dead letter was skipped: the server's words, else its reason's name."""
    if skip.detail:
        return str(skip.detail)
    if skip.reason == admin_pb2.SKIP_REASON_UNSPECIFIED:
        return "reason not recorded"
    try:
        return admin_pb2.SkipReason.Name(skip.reason).removeprefix("SKIP_REASON_").lower()
    except ValueError:
        return f"reason {skip.reason}"
