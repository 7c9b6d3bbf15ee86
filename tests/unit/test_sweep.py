"""`conveyor status --all` without servers: what each kind of reply makes of a registered
process, the exit code, and the address a process registers."""

from __future__ import annotations

import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2

from admin.cli import sweep
from admin.cli.sweep import Reply
from admin.ops.server import advertised_address
from conveyor.v1 import admin_pb2

_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def process(*, absent: bool = False, addr: str = "10.0.0.7:50052") -> admin_pb2.RegisteredProcess:
    return admin_pb2.RegisteredProcess(
        role=admin_pb2.PROCESS_ROLE_CONSUMER,
        name="mailer-1",
        group="mailer",
        host="node-a",
        pid=41,
        grpc_addr=addr,
        heartbeat_age_seconds=95.0 if absent else 3.0,
        absent=absent,
    )


def status(pid: int = 41, host: str = "node-a", **fields: object) -> admin_pb2.GetStatusResponse:
    return admin_pb2.GetStatusResponse(pid=pid, host=host, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("absent", "health", "first"),
    [(False, "UNREACHABLE", "UNAVAILABLE: Connection refused"), (True, "ABSENT", "no heartbeat")],
)
def test_an_address_that_does_not_answer(absent: bool, health: str, first: str) -> None:
    refused = Reply(
        code=grpc.StatusCode.UNAVAILABLE,
        message="failed to connect; last error: ipv4:10.0.0.7:50052: Connection refused",
    )

    found = sweep.judge(process(absent=absent), refused, Reply())

    assert found.health == health
    assert found.brief.startswith(first)
    assert found.reasons[-1].endswith("ipv4:10.0.0.7:50052: Connection refused")
    assert sweep.exit_code([found]) == 4


@pytest.mark.parametrize(("absent", "health"), [(False, "UNREACHABLE"), (True, "ABSENT")])
def test_another_process_answering_at_the_address_is_not_taken_for_it(
    absent: bool, health: str
) -> None:
    found = sweep.judge(process(absent=absent), Reply(_SERVING), Reply(status(pid=77)))

    assert found.health == health
    assert "answered by pid 77 on node-a" in found.reasons[-1]


def test_a_process_that_says_nothing_of_itself_is_taken_at_its_word() -> None:
    found = sweep.judge(process(), Reply(_SERVING), Reply(status(pid=0, host="")))

    assert (found.health, sweep.exit_code([found])) == ("SERVING", 0)


def test_a_server_without_conveyors_admin_service_is_not_taken_for_the_process() -> None:
    """Another team's gRPC server took the port; it serves health only."""
    unimplemented = Reply(code=grpc.StatusCode.UNIMPLEMENTED, message="Method not found!")

    found = sweep.judge(process(), Reply(_SERVING), unimplemented)

    assert found.health == "UNREACHABLE"
    assert "not Conveyor's" in found.reasons[-1]
    assert sweep.exit_code([found]) == 4


@pytest.mark.parametrize(
    ("answered", "why"),
    [
        (Reply(status(pid=0, host="")), "says no pid"),
        (Reply(code=grpc.StatusCode.UNAUTHENTICATED, message="unknown token"), "UNAUTHENTICATED"),
        (Reply(code=grpc.StatusCode.DEADLINE_EXCEEDED, message="Deadline"), "DEADLINE_EXCEEDED"),
    ],
)
def test_a_stale_row_counts_an_answer_only_from_the_process_itself(
    answered: Reply, why: str
) -> None:
    """A heartbeat older than the limit: the address's health answer counts only when GetStatus
    names the registered host and pid."""
    found = sweep.judge(process(absent=True), Reply(_SERVING), answered)

    assert found.health == "ABSENT"
    assert found.brief.startswith("no heartbeat")
    assert "cannot be told to be pid 41 on node-a" in found.reasons[-1]
    assert why in found.reasons[-1]
    assert sweep.exit_code([found]) == 4


def test_a_stale_row_whose_process_still_answers_is_shown_as_it_answers() -> None:
    """Its heartbeats fail (e.g. it cannot reach PostgreSQL), yet it answers as itself."""
    found = sweep.judge(process(absent=True), Reply(_SERVING), Reply(status()))

    assert (found.health, found.brief) == ("SERVING", "no heartbeat for 1m")


def test_refused_credentials_for_the_status_exit_5_when_all_serve() -> None:
    denied = Reply(code=grpc.StatusCode.UNAUTHENTICATED, message="unknown token")

    found = sweep.judge(process(), Reply(_SERVING), denied)

    assert (found.health, found.status, found.denied) == ("SERVING", "", True)
    assert found.brief == "GetStatus UNAUTHENTICATED: unknown token"
    assert sweep.exit_code([found]) == 5


def test_a_not_serving_component_gives_the_reason() -> None:
    component = admin_pb2.ComponentStatus(
        name="conveyor.consumer.identity.mailer",
        state=admin_pb2.COMPONENT_STATE_NOT_SERVING,
        reasons=["redis unreachable"],
    )
    answered = status(overall=admin_pb2.COMPONENT_STATE_NOT_SERVING, components=[component])
    not_serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)

    found = sweep.judge(process(), Reply(not_serving), Reply(answered))

    assert (found.health, found.status, found.brief) == (
        "NOT_SERVING",
        "NOT_SERVING",
        "redis unreachable",
    )
    assert found.reasons == ("conveyor.consumer.identity.mailer: redis unreachable",)
    assert sweep.exit_code([found]) == 4


def test_a_process_registered_without_an_address_cannot_be_asked() -> None:
    found = sweep.judge(process(addr=""), Reply(), Reply())

    assert (found.health, found.brief) == ("UNREACHABLE", "registered no gRPC address")


def test_nothing_registered_is_no_failure() -> None:
    assert sweep.exit_code([]) == 0
    assert sweep.summary([], "conveyor") == (
        "0 processes registered in deployment conveyor: none is running"
    )


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.4, "0s"), (59.9, "60s"), (95, "1m"), (7_300, "2h"), (190_000, "2d")]
)
def test_heartbeat_ages_read_at_a_glance(seconds: float, shown: str) -> None:
    assert sweep.age(seconds) == shown


@pytest.mark.parametrize(
    ("bound", "expected"),
    [
        ("127.0.0.1:0", "127.0.0.1:43125"),
        ("[::1]:0", "[::1]:43125"),
        ("db-host.internal:50051", "db-host.internal:43125"),
        ("0.0.0.0:50051", f"{socket.gethostname()}:43125"),
        ("[::]:0", f"{socket.gethostname()}:43125"),
    ],
)
def test_the_registered_address_is_one_another_host_can_dial(bound: str, expected: str) -> None:
    assert advertised_address(bound, 43125) == expected
