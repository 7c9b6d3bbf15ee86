"""`conveyor bench`: measure Conveyor on the configured services, every figure as a ratio to the
yardstick (a bundled copy of the leanest honest asyncpg + redis-py loops) run in the same run."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from admin.cli import options

_SIZES = "Sizes"


class _Display:
    """The Progress of admin.bench.harness on stderr: a live bar on a terminal, a line per
    stage otherwise."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._console = Console(stderr=True)
        self._quiet = quiet
        self._live = self._console.is_terminal and not quiet
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
        )
        self._task = self._bar.add_task("", total=None)

    def __enter__(self) -> _Display:
        if self._live:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._bar.stop()

    def stage(self, text: str, total: float | None = None) -> None:
        if self._live:
            self._bar.update(self._task, description=text, total=total, completed=0)
        elif not self._quiet:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    def advance(self, done: float) -> None:
        if self._live:
            self._bar.update(self._task, completed=done)


def bench(
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated scenarios to run, in their usual order: relay, consumer, "
            "pipeline, latency, cpu, ops, memory, notify. Default: all."
        ),
    ] = None,
    skip: Annotated[
        str | None, typer.Option(help="Comma-separated scenarios to leave out.")
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON document instead of the table."),
    ] = False,
    traced: Annotated[
        bool,
        typer.Option(
            help="Every event carries the trace context of a sampled producer trace: with "
            "OTEL_EXPORTER_OTLP_ENDPOINT set, measures what tracing every event costs."
        ),
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit 3 when any figure misses its target.")] = False,
    events: Annotated[
        int, typer.Option(help="Events per relay and consumer round.", rich_help_panel=_SIZES)
    ] = 50_000,
    pipeline_events: Annotated[
        int,
        typer.Option(help="Events of the full-pipeline scenario.", rich_help_panel=_SIZES),
    ] = 50_000,
    batch: Annotated[
        int,
        typer.Option(help="Batch size of relay, consumers and yardstick.", rich_help_panel=_SIZES),
    ] = 1000,
    rounds: Annotated[
        int,
        typer.Option(
            help="Rounds of each throughput comparison (medians shown).", rich_help_panel=_SIZES
        ),
    ] = 1,
    latency_rate: Annotated[
        int,
        typer.Option(
            help="Offered load of the latency scenario, events/s.", rich_help_panel=_SIZES
        ),
    ] = 1000,
    latency_seconds: Annotated[
        float,
        typer.Option(help="Seconds of load per latency measurement.", rich_help_panel=_SIZES),
    ] = 8.0,
    cpu_seconds: Annotated[
        float, typer.Option(help="Seconds per CPU-cost load level.", rich_help_panel=_SIZES)
    ] = 6.0,
    ops_calls: Annotated[
        int, typer.Option(help="Unary calls to each gRPC target.", rich_help_panel=_SIZES)
    ] = 600,
    backlog_small: Annotated[
        int, typer.Option(help="Small backlog of the memory scenario.", rich_help_panel=_SIZES)
    ] = 10_000,
    backlog_large: Annotated[
        int,
        typer.Option(
            help="Large backlog of the memory scenario (1000000 for the documented figure).",
            rich_help_panel=_SIZES,
        ),
    ] = 100_000,
    notify_seconds: Annotated[
        float,
        typer.Option(help="Seconds per NOTIFY-cost measurement.", rich_help_panel=_SIZES),
    ] = 2.0,
    notify_connections: Annotated[
        str,
        typer.Option(
            help="Producer connection counts of the NOTIFY scenario.", rich_help_panel=_SIZES
        ),
    ] = "1,4,16",
    database_url: options.DatabaseUrl = options.DEFAULT_DATABASE_URL,
    redis_url: options.RedisUrl = options.DEFAULT_REDIS_URL,
) -> None:
    """Measure relay and consumer rates, latency, CPU per event, ops-plane latency, memory and
    the NOTIFY trigger's cost on the configured PostgreSQL and Redis, each as a ratio to the
    bundled yardstick run in the same run, and print one table (or --json).

    Works in scratch schemas (bench_*), key prefixes (bench*) and the yardstick's schema `yard`,
    all removed afterwards; the catalog must be at head (`conveyor migrate up`). Exits 0 when it
    measured everything (3 with --strict when a target was missed), 1 when a server failed, 2 on
    bad flags.
    """
    import asyncpg
    from redis.exceptions import RedisError

    from admin.bench import report, runner
    from admin.bench.harness import Bench
    from admin.bench.model import Sizes

    names = list(runner.SCENARIOS)
    for flag, value in (("--only", only), ("--skip", skip)):
        if value is None:
            continue
        asked = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in asked if n not in runner.SCENARIOS]
        if unknown or not asked:
            options.fail(
                f"{flag} {value!r}: unknown scenario {', '.join(unknown) or '(none)'}; "
                f"choose from {', '.join(runner.SCENARIOS)}",
                options.EXIT_USAGE,
            )
        names = [n for n in names if (n in asked) == (flag == "--only")]
    if not names:
        options.fail("--only and --skip leave no scenario to run", options.EXIT_USAGE)
    try:
        conns = tuple(int(c) for c in notify_connections.split(","))
        sizes = Sizes(
            events=events,
            pipeline_events=pipeline_events,
            batch=batch,
            rounds=rounds,
            latency_rate=latency_rate,
            latency_seconds=latency_seconds,
            cpu_seconds=cpu_seconds,
            ops_calls=ops_calls,
            backlog_small=backlog_small,
            backlog_large=backlog_large,
            notify_seconds=notify_seconds,
            notify_connections=conns,
        )
    except ValueError as exc:
        options.fail(f"invalid size: {exc}", options.EXIT_USAGE)
    from rich.console import Console

    with _Display(quiet=False) as display:
        b = Bench(database_url, redis_url, sizes, display, traced=traced)
        try:
            machine = asyncio.run(runner.check_services(b))
        except (TimeoutError, OSError, RedisError, asyncpg.PostgresError) as exc:
            options.fail(
                f"bench needs PostgreSQL ({options.redact(database_url)}) and Redis "
                f"({options.redact(redis_url)}): {exc}"
            )
        try:
            figures, seconds = asyncio.run(runner.run(b, names))
        except (OSError, RedisError, asyncpg.PostgresError, RuntimeError) as exc:
            options.fail(f"bench stopped: {exc}")
    if json_out:
        print(report.document(figures, sizes, seconds=seconds, machine=machine))
    else:
        # Piped or redirected, the table keeps its width rather than folding into 80 columns.
        console = Console() if sys.stdout.isatty() else Console(width=150)
        report.print_table(figures, console, seconds=seconds)
    if strict and any(f.met is False for f in figures):
        raise typer.Exit(3)
