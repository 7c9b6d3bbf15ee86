"""`conveyor status`, `trace`, `health` and `metrics`: read a running deployment over gRPC.

Exit codes: 0 ok (health: SERVING); 1 server unreachable, UNAVAILABLE, DEADLINE_EXCEEDED or another
server error; 2 bad input, or INVALID_ARGUMENT from the server; 3 NOT_FOUND (health: the service
is unknown; trace: nothing is known about the event); 4 NOT_SERVING (health; status --all: a
registered process is not SERVING, unreachable or absent);
5 UNAUTHENTICATED or PERMISSION_DENIED; 6 FAILED_PRECONDITION. `health` exits like
grpc_health_probe. Errors are one line on stderr: `conveyor: error: <code>: <message>`.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import typer
from grpc_health.v1 import health_pb2
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from admin.cli import sweep
from admin.cli.client import (
    EXIT_CODES_HELP,
    EXIT_NOT_FOUND,
    EXIT_NOT_SERVING,
    AsJson,
    Client,
    Connection,
    with_connection,
)
from admin.cli.cluster_table import nodes_table
from admin.cli.members_table import members_table
from admin.cli.options import EXIT_OK, EXIT_USAGE, fail
from admin.cli.output import actions_table, dead_letters_view, iso, print_json
from admin.cli.status_groups import groups_table
from admin.cli.status_groups import seconds as _seconds
from admin.cli.tables import add_column, add_row, fitted, list_table
from conveyor.v1 import admin_pb2

_STATE_STYLES = {"SERVING": "green", "DEGRADED": "yellow", "NOT_SERVING": "red"}
_STATUS = health_pb2.HealthCheckResponse
_MIB = 1024 * 1024


def register(app: typer.Typer) -> None:
    """Add `status`, `trace`, `health` and `metrics` to `app`, each with the exit codes."""
    for name, command in (
        ("status", status),
        ("trace", trace),
        ("health", health),
        ("metrics", metrics),
    ):
        app.command(name, epilog=EXIT_CODES_HELP)(command)


@with_connection
def status(
    conn: Connection,
    all_processes: Annotated[
        bool,
        typer.Option(
            "--all",
            help="The daily health sweep: --target lists every relay and consumer registered in "
            "its deployment's catalog, and each is asked for its health and status (same "
            f"credentials; {sweep.DEADLINE:g} s a call at most, {sweep.CONCURRENCY} processes at "
            "a time). One row per process: SERVING, NOT_SERVING, UNREACHABLE (its address does "
            "not answer) or ABSENT (no heartbeat for 30 s, and no answer from that very process). "
            "Exit 0 when all are "
            "SERVING, 4 when one is not, 5 when all are but one refused the credentials.",
        ),
    ] = False,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="With --all: also host:pid, overall status, schemas and topics, start time and "
            "every reason.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Components with their reasons, Redis, outbox backlogs and consumer-group lag; with --all,
    every registered process of the deployment, one row each."""
    if wide and not all_processes:
        fail("--wide goes with --all", EXIT_USAGE)
    if all_processes:
        sweep.run(conn, wide=wide, as_json=as_json)
    with Client(conn) as client:
        response = client.call(client.admin.GetStatus, admin_pb2.GetStatusRequest())
    if as_json:
        print_json(response)
        return
    console = Console()
    overall = _state(response.overall)
    console.print(
        f"overall: [{_STATE_STYLES.get(overall, 'bold')}]{overall}[/]"
        f"  (snapshot {iso(response.snapshot_time) or 'not taken yet'})"
    )
    table = list_table("components")
    add_column(table, "component")
    add_column(table, "state")
    add_column(table, "reasons", wrap=True)
    for component in response.components:
        state = _state(component.state)
        style = _STATE_STYLES.get(state, "")
        add_row(table, component.name, Text(state, style=style), "; ".join(component.reasons))
    console.print(fitted(table, console.width))
    if response.HasField("redis"):
        console.print(_redis_table(response.redis))
        if response.redis.nodes:
            console.print(fitted(nodes_table(response.redis.nodes), console.width))
    if response.outboxes:
        console.print(fitted(_outbox_table(response.outboxes), console.width))
    else:  # a consumer: no table of nothing, but who to ask
        console.print("outbox backlog: none here (a relay reports the outboxes it drains)")
    if response.groups:
        console.print(fitted(groups_table(response.groups), console.width))
        if (members := members_table(response.groups)) is not None:
            console.print(fitted(members, console.width))
    elif response.HasField("redis") and response.redis.up:
        console.print(
            "consumer groups: none in this snapshot (no consumer registered yet, or the "
            "registry could not be read)"
        )
    else:
        console.print("consumer groups: not known while Redis is down")


def _state(value: int) -> str:
    try:
        return admin_pb2.ComponentState.Name(value).removeprefix("COMPONENT_STATE_")
    except ValueError:
        return str(value)


def _redis_table(redis: Any) -> Table:
    table = Table(title="redis", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: dict[str, str | Text] = {
        "up": Text("yes", style="green") if redis.up else Text("no", style="red"),
        "ping": f"{redis.ping_latency_seconds * 1000:.2f} ms",
        "used memory": f"{redis.used_memory_bytes / _MIB:.1f} MiB",
        "maxmemory": f"{redis.maxmemory_bytes / _MIB:.1f} MiB" if redis.maxmemory_bytes else "none",
        "aof": "on" if redis.aof_enabled else "off",
        "aof last rewrite": redis.aof_last_rewrite_status,
        "run id": redis.run_id,
    }
    if redis.error:
        rows["error"] = Text(redis.error, style="red")
    for name, value in rows.items():
        add_row(table, name, value)
    return table


def _outbox_table(outboxes: Iterable[Any]) -> Table:
    table = list_table("outbox backlog")
    add_column(table, "schema")
    add_column(table, "backlog", right=True)
    add_column(table, "oldest age", right=True)
    for outbox in outboxes:
        add_row(table, outbox.schema, str(outbox.backlog), _seconds(outbox.oldest_age_seconds))
    return table


def _no_outbox_row(schemas: Iterable[str]) -> str:
    """Why a trace shows no outbox row, and where to ask instead."""
    looked = ", ".join(schemas)
    where = f"in schema {looked}" if "," not in looked else f"in schemas {looked}"
    return (
        f"outbox: no row {where if looked else 'here'} (written in another schema, or deleted "
        "after publishing); the outbox is the producer's schema, which its relay drains: "
        "ask the relay with --target its --grpc-addr"
    )


@with_connection
def trace(
    conn: Connection,
    event_id: Annotated[str, typer.Argument(help="The event's id (a UUID).")],
    as_json: AsJson = False,
) -> None:
    """Everything known about one event: outbox row, stream entries, ledger, dead letters."""
    request = admin_pb2.TraceEventRequest(event_id=event_id.strip())
    with Client(conn) as client:
        response = client.call(client.admin.TraceEvent, request)
    if as_json:
        print_json(response)
    else:
        _print_trace(response, request.event_id)
    found = response.HasField("outbox") or any(
        (response.stream_entries, response.ledger, response.dead_letters, response.actions)
    )
    if not found and not response.unreachable:
        fail(f"NOT_FOUND: nothing is known about event {request.event_id}", EXIT_NOT_FOUND)


def _print_trace(response: Any, event_id: str) -> None:
    console = Console()
    console.print(Text(f"event {event_id}", style="bold"))
    if response.HasField("outbox"):
        o = response.outbox
        parts = {
            "schema": f"{o.schema} row {o.id}",
            "topic": o.topic,
            "type": o.event_type,
            "aggregate": f"{o.aggregate_type}/{o.aggregate_id}" if o.aggregate_id else "",
            "created": iso(o.create_time),
            "published": iso(o.publish_time) or "not yet",
        }
        shown = ", ".join(f"{name} {value}" for name, value in parts.items() if value)
        console.print(f"outbox: {shown}", highlight=False, markup=False)
    else:
        console.print(_no_outbox_row(response.schemas), highlight=False, markup=False)
    if response.stream_entries:
        table = list_table("stream entries")
        add_column(table, "stream")
        add_column(table, "entry id")
        for entry in response.stream_entries:
            add_row(table, entry.stream, entry.entry_id)
        console.print(fitted(table, console.width))
    if response.ledger:
        table = list_table("ledger")
        for name in ("schema", "group", "result", "processed (UTC)", "stream", "entry id"):
            add_column(table, name)
        for row in response.ledger:
            add_row(
                table,
                row.schema,
                row.group,
                row.result,
                iso(row.process_time),
                row.stream,
                row.entry_id,
            )
        console.print(fitted(table, console.width))
    if response.dead_letters:
        now = datetime.now(UTC)
        console.print(dead_letters_view(response.dead_letters, width=console.width, now=now))
    if response.actions:
        console.print(actions_table(response.actions, console.width))
    for part in response.unreachable:
        console.print(Text.assemble(("not looked at: ", "yellow"), part))


@with_connection
def health(
    conn: Connection,
    service: Annotated[
        str, typer.Argument(help="Service, e.g. conveyor.liveness. Default: overall readiness.")
    ] = "",
    watch: Annotated[bool, typer.Option(help="Print every change until interrupted.")] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait up to --timeout for a process that is still starting to listen and "
            "answer SERVING, instead of failing at once.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """grpc.health.v1 status of a service: exit 0 SERVING, 4 NOT_SERVING, 3 unknown service."""
    request = health_pb2.HealthCheckRequest(service=service)
    unknown = (
        f"unknown health service {service!r} at {conn.target}; Conveyor processes serve '' "
        "(overall readiness), conveyor.liveness and one per component (see `conveyor status`)"
    )
    with Client(conn) as client:
        if not watch:
            status = _check(client, request, conn.timeout if wait else 0.0, unknown)
            _print_health(service, status, as_json)
            raise typer.Exit(_health_exit(status))
        last = _STATUS.UNKNOWN
        try:
            for response in client.stream(client.health.Watch, request, idle=None, auth=False):
                if response.status == _STATUS.SERVICE_UNKNOWN != last:
                    print(f"conveyor: {unknown}; watching until it appears", file=sys.stderr)
                last = response.status
                _print_health(service, last, as_json, stamp=True)
        except KeyboardInterrupt:
            pass
        raise typer.Exit(_health_exit(last))


def _check(client: Client, request: Any, wait: float, unknown: str) -> int:
    """The service's status; with `wait` > 0, the first SERVING within `wait` seconds, each call
    waiting for the server to listen (gRPC wait_for_ready)."""
    deadline = time.monotonic() + wait
    check = functools.partial(client.health.Check, wait_for_ready=wait > 0)
    while True:
        response = client.call(
            check, request, auth=False, unexplained={grpc.StatusCode.NOT_FOUND: unknown}
        )
        if response.status == _STATUS.SERVING or time.monotonic() >= deadline:
            return int(response.status)
        time.sleep(0.2)


def _print_health(service: str, value: int, as_json: bool, *, stamp: bool = False) -> None:
    name = _STATUS.ServingStatus.Name(value)
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if as_json:
        data = {"service": service, "status": name} | ({"time": now} if stamp else {})
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stdout.write(f"{now} {name}\n" if stamp else f"{name}\n")
    sys.stdout.flush()


def _health_exit(value: int) -> int:
    if value == _STATUS.SERVING:
        return EXIT_OK
    return EXIT_NOT_FOUND if value == _STATUS.SERVICE_UNKNOWN else EXIT_NOT_SERVING


@with_connection
def metrics(
    conn: Connection,
    as_json: AsJson = False,
) -> None:
    """The OpenTelemetry instruments of the process at --target, a row per data point."""
    with Client(conn) as client:
        response = client.call(client.admin.GetMetrics, admin_pb2.GetMetricsRequest())
    if as_json:
        print_json(response)
        return
    console = Console()
    console.print(_metrics_table(response.metrics))


def _metrics_table(metrics: Iterable[Any]) -> RenderableType:
    """An instrument per heading (`name  kind, unit`), its data points indented under it:
    attributes wrap, values stay whole."""
    metrics = list(metrics)
    parts: list[RenderableType] = [Text(f"{len(metrics)} instruments", style="bold")]
    for metric in metrics:
        kind = admin_pb2.MetricKind.Name(metric.kind).removeprefix("METRIC_KIND_").lower()
        about = f"{kind}, {metric.unit}" if metric.unit else kind
        parts.append(Text.assemble((metric.name, "bold"), f"  {about}"))
        points = Table.grid(padding=(0, 2))
        points.add_column(overflow="fold")
        points.add_column(justify="right", no_wrap=True)
        for point in metric.points or [None]:
            points.add_row(
                Text(_attributes(point) or "(no attributes)"), _point_value(metric.kind, point)
            )
        parts.append(Padding(points, (0, 0, 0, 2)))
    return Group(*parts)


def _attributes(point: Any) -> str:
    if point is None:
        return ""
    return ", ".join(f"{key}={value}" for key, value in sorted(point.attributes.items()))


def _point_value(kind: int, point: Any) -> str:
    if point is None:
        return "(no data)"
    if kind == admin_pb2.METRIC_KIND_HISTOGRAM:
        mean = f", mean {point.sum / point.count:.4g}" if point.count else ""
        return f"count {point.count}, sum {point.sum:.4g}{mean}"
    return f"{point.value:g}"


app = typer.Typer(help="Status, traces, health and metrics of a running deployment.")
"""The four commands on their own (tests; `conveyor` mounts them with `register`)."""
register(app)
