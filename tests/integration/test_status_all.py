"""`conveyor status --all` against real processes: a relay and two consumers register the
addresses they really listen on, the sweep asks each of them with the caller's token, and a
killed, stale or stopped process shows as it should."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from admin.cli import sweep as sweeping
from admin.cli.client import EXIT_OK, Connection
from conveyor.v1 import admin_pb2
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects
from tests.integration.test_ops_plane import (
    READ_TOKEN,
    SERVING,
    check,
    port_of,
    tokens_file,  # noqa: F401 - a pytest fixture
)
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow


@dataclass
class Deployment:
    """The processes of one test's deployment, by name, with the ports they listen on."""

    procs: dict[str, subprocess.Popen[str]]
    ports: dict[str, int]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


@pytest.fixture
async def deployment(case: Case, tokens_file: Path) -> AsyncIterator[Deployment]:  # noqa: F811
    """A relay and two consumers (groups mailer and billing) on 127.0.0.1:0, registered and
    SERVING; whatever is still running is stopped afterwards, and the test's registry rows go."""
    await create_effects(case.pg, case.schema)
    env = case.env | {"TEST_EFFECTS_SCHEMA": case.schema}
    auth = ["--tokens-file", str(tokens_file)]
    router = "tests.integration.effects_router:router"
    commands = {
        "relay": ["relay", *auth],
        "mailer": ["consume", "--group", "mailer", "--consumer", "mailer-1", "--router", router],
        "billing": ["consume", "--group", "billing", "--consumer", "billing-1", "--router", router],
    }
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, args in commands.items():
            extra = [] if name == "relay" else ["--ledger-schema", case.schema, *auth]
            procs[name] = start_conveyor([*args, *extra], env)
        ports = {name: port_of(proc, []) for name, proc in procs.items()}

        async def registered_and_serving() -> bool:
            rows = await case.pg.fetchval(
                "SELECT (SELECT count(*) FROM conveyor.relays WHERE key_prefix = $1) "
                "+ (SELECT count(*) FROM conveyor.consumers WHERE key_prefix = $1)",
                case.prefix,
            )
            return rows == 3 and all(check(port, "") == SERVING for port in ports.values())

        await wait_until(registered_and_serving, timeout=60, what="three processes serving")
        yield Deployment(procs, ports)
    finally:
        for proc in procs.values():
            stop(proc)
        for table in ("relays", "consumers"):
            await case.pg.execute(
                f"DELETE FROM conveyor.{table} WHERE key_prefix = $1", case.prefix
            )


def sweep(d: Deployment, *args: str, token: str | None = READ_TOKEN) -> tuple[int, Any]:
    """`conveyor status --all ARGS` against the relay: exit code, and the parsed JSON (or the
    text) it printed."""
    env = {"CONVEYOR_TARGET": d.address("relay"), "COLUMNS": "80"}
    env |= {"CONVEYOR_ADMIN_TOKEN": token} if token else {}
    result = run_conveyor(["status", "--all", *args], env)
    if "--json" in args and result.returncode in (0, 4):
        return result.returncode, json.loads(result.stdout)
    return result.returncode, result.stdout + result.stderr


def by_name(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in found["processes"]}


async def test_every_registered_process_is_asked_and_a_lost_one_is_shown(
    case: Case, deployment: Deployment
) -> None:
    d = deployment
    code, found = sweep(d, "--json")

    assert code == 0, found
    processes = by_name(found)
    relay_name = next(name for name, p in processes.items() if p["role"] == "relay")
    assert {name: p["address"] for name, p in processes.items()} == {
        relay_name: d.address("relay"),
        "mailer-1": d.address("mailer"),
        "billing-1": d.address("billing"),
    }, "each process registers the port it really listens on"
    assert {p["health"] for p in processes.values()} == {"SERVING"}
    # GetStatus answered on every process: the caller's token went to each of them.
    assert {p["status"] for p in processes.values()} == {"SERVING"}
    assert processes[relay_name]["schemas"] == [case.schema]
    assert processes[relay_name]["pid"] == d.procs["relay"].pid
    assert (processes["mailer-1"]["group"], processes["mailer-1"]["topics"]) == (
        "mailer",
        ["identity"],
    )

    code, text = sweep(d)
    assert code == 0, text
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["relay", relay_name],
        ["consumer", "billing"],
        ["consumer", "mailer"],
    ], text
    assert f"3 processes registered in deployment {case.prefix}: 3 SERVING" in lines[-1]

    code, text = sweep(d, token=None)
    assert code == 5, "listing the deployment needs a token"
    assert "UNAUTHENTICATED" in text

    stop(d.procs["billing"], signal.SIGKILL)
    code, found = sweep(d, "--json")
    assert code == 4, found
    billing = by_name(found)["billing-1"]
    assert billing["health"] == "UNREACHABLE", "its row is fresh, its port closed"
    assert billing["reasons"][0].startswith("UNAVAILABLE")
    assert {by_name(found)[n]["health"] for n in (relay_name, "mailer-1")} == {"SERVING"}

    await case.pg.execute(  # what a minute without heartbeats leaves behind
        "UPDATE conveyor.consumers SET heartbeat_at = now() - interval '90 seconds' "
        "WHERE key_prefix = $1 AND consumer_name = 'billing-1'",
        case.prefix,
    )
    code, found = sweep(d, "--json")
    assert code == 4
    billing = by_name(found)["billing-1"]
    assert billing["health"] == "ABSENT"
    assert billing["reasons"][0] == "no heartbeat for 1m"

    stop(d.procs["mailer"])  # a clean stop
    code, found = sweep(d, "--json")
    assert code == 4, "billing is still absent"
    assert set(by_name(found)) == {relay_name, "billing-1"}, "a clean stop leaves the registry"

    stop(d.procs["relay"])
    relays = await case.pg.fetchval(
        "SELECT count(*) FROM conveyor.relays WHERE key_prefix = $1", case.prefix
    )
    assert relays == 0, "a relay's clean stop removes its row too"


@pytest.fixture(name="other_service")
def fixture_other_service() -> Iterator[int]:
    """A gRPC server that is not Conveyor: grpc.health.v1 only, SERVING; yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


@pytest.mark.parametrize("absent", [True, False])
def test_a_relay_whose_port_another_service_took_is_not_reported_serving(
    other_service: int, absent: bool
) -> None:
    """A relay died (an hour ago, or just now: its row is still fresh) and another team's gRPC
    server, with the standard health service only, took its port: it answers health SERVING
    and GetStatus UNIMPLEMENTED. The sweep must not take its health for the relay's."""
    address = f"127.0.0.1:{other_service}"
    dead = admin_pb2.RegisteredProcess(
        role=admin_pb2.PROCESS_ROLE_RELAY,
        name="relay-host-4242",
        host="relay-host",
        pid=4242,
        grpc_addr=address,
        heartbeat_age_seconds=3_600.0 if absent else 3.0,
        absent=absent,
    )
    conn = Connection(target=address, token=None, timeout=5.0)

    findings = sweeping.sweep(conn, [dead])

    assert findings[0].health == ("ABSENT" if absent else "UNREACHABLE"), findings[0]
    assert "not Conveyor's" in findings[0].reasons[-1]
    assert sweeping.exit_code(findings) != EXIT_OK
