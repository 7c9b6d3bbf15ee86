"""How `conveyor verify` shows its work: a progress line on stderr while it reads, then the report
as tables (or JSON) on stdout."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from admin.cli.tables import add_column, add_row, fitted, list_table
from admin.verify import GroupReport, Outcome, Report
from conveyor import wire

_COLUMNS = (
    (Outcome.APPLIED, "applied", ""),
    (Outcome.DEAD_LETTERED, "dead-lettered", "yellow"),
    (Outcome.IN_FLIGHT, "in flight", ""),
    (Outcome.UNKNOWN, "unknown", "yellow"),
    (Outcome.LOST, "lost", "bold red"),
)


_SOURCES = {
    "registry": "registered",
    "option": "--ledger-schema",
    "inferred": "the only ledger with rows of it",
}


class _Display:
    """A `Progress` of the verifier shown as one rich progress bar: the outbox window by publish
    time, then the entries read per stream."""

    def __init__(self, progress: Progress, since: datetime) -> None:
        self._progress = progress
        self._since = since
        total = max((datetime.now(UTC) - since).total_seconds(), 1.0)
        self._task = progress.add_task("outbox", total=total)
        self._rows = 0
        self._entries: Counter[str] = Counter()

    def outbox(self, rows: int, reached: datetime | None) -> None:
        self._rows += rows
        completed = None if reached is None else (reached - self._since).total_seconds()
        self._progress.update(
            self._task, completed=completed, description=f"outbox: {self._rows} rows read"
        )

    def stream(self, topic: str, entries: int) -> None:
        self._entries[topic] += entries
        self._progress.update(
            self._task, description=f"stream {topic}: {self._entries[topic]} entries read"
        )


@contextmanager
def progress_display(since: datetime, *, quiet: bool) -> Iterator[_Display]:
    """A progress bar on stderr while the block runs; none off a terminal or when `quiet`."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,  # off a terminal it leaves a blank line
        transient=True,
    ) as progress:
        yield _Display(progress, since)


def print_json_report(report: Report) -> None:
    """The report as JSON on stdout."""
    sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")


def print_report(report: Report) -> None:
    """The report as tables on stdout: verified groups, their classes with example event ids,
    the groups not verified and why, and what to do about lost events."""
    console = Console(highlight=False)
    what = f"topic {report.topic}" if report.topic else "all topics"
    console.print(
        f"schema {report.schema}, {what}: {report.events} outbox events published from "
        f"{_time(report.since)} to {_time(report.until)} (or created since, not published yet)",
        markup=False,
        soft_wrap=True,  # whole at any width, as when piped
    )
    groups = sorted(report.groups.values(), key=lambda g: g.group)
    verified = [g for g in groups if g.verified]
    if verified:
        console.print(fitted(_counts_table(verified), console.width))
        for group in verified:
            for line in _detail_lines(group):
                console.print(line, soft_wrap=True)  # event ids stay whole, to copy
    if others := [g for g in groups if not g.verified]:
        console.print(fitted(_not_verified_table(others), console.width))
    if not groups:
        console.print("no consumer group found for these topics", markup=False)
    for topic, n in sorted(report.unconsumed.items()):
        console.print(f"topic {topic}: {n} events, and no group consumes it", markup=False)
    console.print(_verdict(report), soft_wrap=True)  # the commands stay whole, to copy


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _counts_table(groups: list[GroupReport]) -> Table:
    table = list_table("exactly-once groups")
    add_column(table, "group")
    add_column(table, "events", right=True)
    for _, name, _ in _COLUMNS:
        add_column(table, name, right=True)
    for g in groups:
        cells: list[str | Text] = [g.group, str(g.events)]
        for outcome, _, style in _COLUMNS:
            n = g.count(outcome)
            cells.append(Text(str(n), style=style if n else ""))
        add_row(table, *cells)
    return table


def _detail_lines(group: GroupReport) -> Iterator[Text]:
    """Where its ledger is, then a line per class but applied: its count by detail and its
    example event ids."""
    yield Text(f"{group.group}: ledger {group.ledger_schema} ({_SOURCES[group.ledger_source]})")
    for outcome, name, style in _COLUMNS[1:]:
        n = group.count(outcome)
        if not n:
            continue
        details = ", ".join(f"{d} {c}" for d, c in group.details(outcome).items())
        line = Text.assemble(f"{group.group}: ", (f"{name} {n}", style), f" ({details})")
        if examples := group.examples.get(outcome):
            line.append(": " + " ".join(examples))
        yield line


def _not_verified_table(groups: list[GroupReport]) -> Table:
    table = list_table("not verified")
    for name in ("group", "mode", "topic", "lag", "pending"):
        add_column(table, name, right=name in ("lag", "pending"))
    add_column(table, "why", wrap=True)
    for g in groups:
        why = g.not_verified or ""
        for state in sorted(g.streams.values(), key=lambda s: s.topic):
            lag = "?" if state.lag is None else str(state.lag)
            if not state.on_stream:
                lag = "no group"
            add_row(table, g.group, g.mode, state.topic, lag, str(state.pending), why)
        if not g.streams:  # on none of the topics looked at
            add_row(table, g.group, g.mode, "", "", "", why)
    return table


def _verdict(report: Report) -> Text:
    if not report.lost:
        return Text("nothing lost", style="green")
    groups = sorted(g.group for g in report.groups.values() if g.count(Outcome.LOST))
    events = "event" if report.lost == 1 else "events"
    return Text.assemble(
        (f"LOST: {report.lost} {events}", "bold red"),
        f" (groups {', '.join(groups)}). See each with `conveyor trace EVENT_ID`; republish the "
        f"window with `{_replay(report)}` (exactly-once groups skip what they applied).",
    )


def _replay(report: Report) -> str:
    """The command that republishes the window's events."""
    command = f"conveyor relay replay --schema {report.schema} --since {_time(report.since)}"
    if report.topic:
        command += f" --topic {report.topic}"
    if report.key_prefix != wire.DEFAULT_PREFIX:
        command += f" --key-prefix {report.key_prefix}"
    return command
