"""`conveyor status --all`: the daily health sweep. The target lists every relay and consumer
registered in its deployment's catalog (ListProcesses); each is then asked, concurrently and with
the same credentials, for its health (grpc.health.v1 Check "") and its status (GetStatus), and
the answers are printed as one table.

A process's health is what it answered (SERVING, NOT_SERVING), UNREACHABLE when its address does
not answer or is answered by another process, or ABSENT when its heartbeat is older than the
deployment's limit (30 s: three missed beats) and its address does not answer or is answered by
another process. Another process is one whose GetStatus names another host or pid, or a gRPC
service that is not Conveyor (GetStatus UNIMPLEMENTED). For a process whose heartbeat is stale
the health answer counts only when GetStatus answered with its own host and pid: a port that
lost its owner long ago is easily taken by another server. Exit 0 when every
registered process is SERVING (or none is registered), 4 when any is not; 5 when all serve but a
process refused the credentials for its status.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import grpc
import typer
from grpc_health.v1 import health_pb2
from rich.console import Console
from rich.table import Table
from rich.text import Text

from admin.cli.client import EXIT_DENIED, EXIT_NOT_SERVING, Client, Connection
from admin.cli.options import EXIT_OK
from admin.cli.output import iso
from admin.cli.tables import add_column, add_row, fitted, list_table
from conveyor.v1 import admin_pb2

DEADLINE = 5.0
"""Seconds each process gets for its health check, and again for its status (less when
--timeout is shorter)."""
CONCURRENCY = 16
"""Processes asked at once."""

SERVING, NOT_SERVING, UNREACHABLE, ABSENT = "SERVING", "NOT_SERVING", "UNREACHABLE", "ABSENT"
_STYLES = {SERVING: "green", NOT_SERVING: "red", UNREACHABLE: "red", ABSENT: "yellow"}
_DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass(frozen=True, slots=True)
class Reply:
    """What one call to a process came back with: a response, or a failure's code and message."""

    response: Any = None
    code: Any = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Finding:
    """One registered process as the sweep found it."""

    process: Any
    """Its admin_pb2.RegisteredProcess."""
    health: str
    status: str
    """Its overall component state (SERVING, DEGRADED, NOT_SERVING); '' when not asked."""
    reasons: tuple[str, ...]
    brief: str = ""
    """The first reason in few words, for the table."""
    denied: bool = False
    """It refused the credentials for GetStatus."""


def role(process: Any) -> str:
    """`relay` or `consumer`."""
    return admin_pb2.ProcessRole.Name(process.role).removeprefix("PROCESS_ROLE_").lower()


def age(seconds: float) -> str:
    """A heartbeat age in its largest whole unit: 4s, 12m, 3h, 2d."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _failed(exc: grpc.RpcError) -> Reply:
    code, details = exc.code(), exc.details()
    return Reply(code=code, message=" ".join(str(details or "").split()))


def ask(conn: Connection, process: Any) -> tuple[Reply, Reply]:
    """The process's health and status replies; status is not asked when health got no answer."""
    timeout = min(conn.timeout, DEADLINE)
    with Client(replace(conn, target=process.grpc_addr, timeout=timeout)) as client:
        try:
            check = client.ask(
                client.health.Check, health_pb2.HealthCheckRequest(), timeout=timeout, auth=False
            )
        except grpc.RpcError as exc:
            return _failed(exc), Reply()
        try:
            status = client.ask(
                client.admin.GetStatus, admin_pb2.GetStatusRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            return Reply(check), _failed(exc)
        return Reply(check), Reply(status)


def _state(value: int) -> str:
    try:
        return admin_pb2.ComponentState.Name(value).removeprefix("COMPONENT_STATE_")
    except ValueError:
        return str(value)


def _said(what: str, reply: Reply) -> tuple[str, str]:
    """A failed call as a reason, in full and in brief (its code and the message's last clause,
    e.g. `UNAVAILABLE: Connection refused`)."""
    code = reply.code.name if reply.code is not None else "UNKNOWN"
    if not reply.message:
        return f"{what}{code}", f"{what}{code}"
    return f"{what}{code}: {reply.message}", f"{what}{code}: {reply.message.rsplit(': ', 1)[-1]}"


def _impostor(process: Any, answered: Any) -> bool:
    """Whether another process answered at `process`'s address (one that took its port after
    it died); processes of versions that do not say who they are are taken at their word."""
    if answered is None or not answered.pid or not process.pid:
        return False
    return bool((answered.pid, answered.host) != (process.pid, process.host))


def _itself(process: Any, answered: Any) -> bool:
    """Whether `answered` (a GetStatus response, or None) names `process`'s own host and pid."""
    if answered is None or not answered.pid:
        return False
    return bool((answered.pid, answered.host) == (process.pid, process.host))


def _stranger(process: Any, status: Reply) -> str | None:
    """Why the server at `process`'s address is not taken for it, or None when it is: another
    process said who it is, a server without Conveyor's AdminService answered, or (for a process
    whose heartbeat is stale) the answer could not be told to come from `process` itself."""
    answered = status.response
    if _impostor(process, answered):
        return f"{process.grpc_addr} is answered by pid {answered.pid} on {answered.host}"
    if status.code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{process.grpc_addr} is answered by a gRPC server that is not Conveyor's"
    if process.absent and not _itself(process, answered):
        why = "says no pid" if answered is not None else _said("GetStatus ", status)[1]
        return (
            f"{process.grpc_addr} answers, but cannot be told to be pid {process.pid} on "
            f"{process.host} ({why})"
        )
    return None


def judge(process: Any, health: Reply, status: Reply) -> Finding:
    """What the replies say of `process` (see the module's docstring)."""
    gone = ABSENT if process.absent else UNREACHABLE
    stale = f"no heartbeat for {age(process.heartbeat_age_seconds)}"
    first = (stale,) if process.absent else ()
    if not process.grpc_addr:
        said = "registered no gRPC address"
        return Finding(process, gone, "", (*first, said), (*first, said)[0])
    if health.response is None:
        said, brief = _said("", health)
        return Finding(process, gone, "", (*first, said), (*first, brief)[0])
    other = _stranger(process, status)
    if other is not None:
        return Finding(process, gone, "", (*first, other), (*first, other)[0])
    answered = status.response
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(health.response.status)
    if answered is None:
        said, brief = _said("GetStatus ", status)
        denied = status.code in _DENIED
        return Finding(process, name, "", (*first, said), (*first, brief)[0], denied=denied)
    reasons, briefs = list(first), list(first)
    for component in answered.components:
        if component.state != admin_pb2.COMPONENT_STATE_SERVING:
            reasons += [f"{component.name}: {r}" for r in component.reasons] or [component.name]
            briefs += list(component.reasons) or [component.name]
    brief = briefs[0] if briefs else ""
    return Finding(process, name, _state(answered.overall), tuple(reasons), brief)


def sweep(conn: Connection, processes: Sequence[Any]) -> list[Finding]:
    """Every process asked, CONCURRENCY at a time; findings in the order of `processes`."""

    def one(process: Any) -> Finding:
        if not process.grpc_addr:
            return judge(process, Reply(), Reply())
        return judge(process, *ask(conn, process))

    if not processes:
        return []
    with ThreadPoolExecutor(max_workers=min(CONCURRENCY, len(processes))) as pool:
        return list(pool.map(one, processes))


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when every process is SERVING; 4 when one is not; 5 when all are but one refused the
    credentials."""
    if any(f.health != SERVING for f in findings):
        return EXIT_NOT_SERVING
    return EXIT_DENIED if any(f.denied for f in findings) else EXIT_OK


def summary(findings: Sequence[Finding], key_prefix: str) -> str:
    """One line: how many processes, and how many in each health."""
    counts = Counter(f.health for f in findings)
    order = [SERVING, NOT_SERVING, UNREACHABLE, ABSENT]
    parts = [f"{counts[h]} {h}" for h in order + sorted(set(counts) - set(order)) if counts[h]]
    n = len(findings)
    what = f"{n} process{'es' if n != 1 else ''} registered in deployment {key_prefix}"
    return f"{what}: {', '.join(parts)}" if parts else f"{what}: none is running"


def table(findings: Sequence[Finding], *, wide: bool) -> Table:
    """One row per process: role, group, name, address, heartbeat age, health, first reason;
    with `wide` also host:pid, overall status, schemas and topics, start time and every reason."""
    t = list_table()
    names = ["role", "group", "name", "address", "beat", "health"]
    names += ["host:pid", "status", "serves", "started"] if wide else []
    for name in names:
        add_column(t, name, right=name == "beat")
    add_column(t, "reasons" if wide else "reason", wrap=True)
    for f in findings:
        p = f.process
        cells: list[str | Text] = [
            role(p),
            p.group,
            p.name,
            p.grpc_addr or "-",
            age(p.heartbeat_age_seconds),
            Text(f.health, style=_STYLES.get(f.health, "")),
        ]
        if wide:
            cells += [f"{p.host}:{p.pid}", f.status, serves(p), iso(p.start_time)]
        add_row(t, *cells, "; ".join(f.reasons) if wide else f.brief)
    return t


def serves(process: Any) -> str:
    """A relay's schemas; a consumer's topics, and its ledger schema when it has one."""
    if role(process) == "relay":
        return ",".join(process.schemas)
    ledger = f" (ledger {','.join(process.schemas)})" if process.schemas else ""
    return ",".join(process.topics) + ledger


def as_dict(f: Finding) -> dict[str, Any]:
    """One finding for --json."""
    p = f.process
    return {
        "role": role(p),
        "group": p.group,
        "name": p.name,
        "host": p.host,
        "pid": p.pid,
        "address": p.grpc_addr,
        "schemas": list(p.schemas),
        "topics": list(p.topics),
        "mode": p.mode,
        "start_time": iso(p.start_time),
        "heartbeat_age_seconds": round(p.heartbeat_age_seconds, 3),
        "health": f.health,
        "status": f.status,
        "reasons": list(f.reasons),
    }


def run(conn: Connection, *, wide: bool, as_json: bool) -> None:
    """`conveyor status --all`: list, ask, print, and exit with the sweep's code."""
    with Client(conn) as client:
        listed = client.call(client.admin.ListProcesses, admin_pb2.ListProcessesRequest())
    findings = sweep(conn, listed.processes)
    line = summary(findings, listed.key_prefix)
    if as_json:
        document = {
            "key_prefix": listed.key_prefix,
            "absent_after_seconds": listed.absent_after_seconds,
            "processes": [as_dict(f) for f in findings],
            "summary": line,
        }
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        console = Console()
        if findings:
            console.print(fitted(table(findings, wide=wide), console.width))
        console.print(line, highlight=False, markup=False)
    raise typer.Exit(exit_code(findings))
