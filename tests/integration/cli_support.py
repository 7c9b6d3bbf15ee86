"""The CLI client tests' fake AdminService on an in-process gRPC server, and a `conveyor` runner
pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2_grpc
from typer.testing import CliRunner, Result

from admin.cli import dlq as dlq_cli
from admin.cli import monitoring as ops_cli
from conveyor.v1 import admin_pb2, admin_pb2_grpc, dead_letter_pb2

TOKEN = "s3cret-token"
ENTRY = "1700000000000-0"

# The root app mounts the sub-apps exactly as admin/cli.py does.
root = typer.Typer()
root.add_typer(dlq_cli.app, name="dlq")
ops_cli.register(root)


@dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    """Answers each method from `answers` (a message, a list for streams, or request -> either)."""

    calls: list[Call] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)

    def _answer(self, method: str, request: Any, context: Any) -> Any:
        self.calls.append(Call(method, request, dict(context.invocation_metadata())))
        if method in self.errors:
            context.abort(*self.errors[method])
        answer = self.answers[method]
        return answer(request) if callable(answer) else answer

    def requests(self, method: str) -> list[Any]:
        return [call.request for call in self.calls if call.method == method]


def _handler(method: Any) -> Callable[..., Any]:
    def unary(self: FakeAdmin, request: Any, context: Any) -> Any:
        return self._answer(method.name, request, context)

    def streaming(self: FakeAdmin, request: Any, context: Any) -> Iterator[Any]:
        yield from self._answer(method.name, request, context)

    return streaming if method.server_streaming else unary


# Every RPC of the service, so a call the CLI makes never meets UNIMPLEMENTED by accident.
for _method in admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods:
    setattr(FakeAdmin, _method.name, _handler(_method))


@dataclass
class Served:
    target: str
    admin: FakeAdmin
    health: Any


@pytest.fixture(name="served", scope="module")
def fixture_served() -> Iterator[Served]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    admin, health_servicer = FakeAdmin(), health.HealthServicer()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield Served(f"127.0.0.1:{port}", admin, health_servicer)
    server.stop(None)


@pytest.fixture(name="fake")
def fixture_fake(served: Served) -> FakeAdmin:
    """The fake AdminService, with no calls recorded and nothing to answer yet."""
    served.admin.calls.clear()
    served.admin.answers.clear()
    served.admin.errors.clear()
    return served.admin


@pytest.fixture(name="run")
def fixture_run(served: Served) -> Callable[..., Result]:
    """Invoke `conveyor ARGS...` against the fake server, with CONVEYOR_ADMIN_TOKEN set."""

    def invoke(*args: str, input: str | None = None, **env: str | None) -> Result:
        environment: dict[str, str | None] = {
            "CONVEYOR_TARGET": served.target,
            "CONVEYOR_ADMIN_TOKEN": TOKEN,
            "CONVEYOR_ADMIN_TOKEN_FILE": None,
            "CONVEYOR_ADMIN_TIMEOUT": None,
            "COLUMNS": "220",
        }
        return CliRunner().invoke(root, list(args), input=input, env=environment | env)

    return invoke


def timestamp(text: str) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return ts


def dead_letter(entry_id: str = ENTRY, **fields: Any) -> admin_pb2.DeadLetter:
    values: dict[str, Any] = {
        "id": 7,
        "topic": "identity",
        "entry_id": entry_id,
        "group": "mailer",
        "consumer": "host-1",
        "event_id": "0b8f6c1e-53a4-4b9e-9a57-1d1b0c7f3a11",
        "event_type": "identity.user_registered",
        "reason": dead_letter_pb2.DEAD_LETTER_REASON_MAX_ATTEMPTS,
        "error_class": "SMTPError",
        "error_message": "mail server said 451 [/] try later\nsecond line",
        "attempts": 5,
        "create_time": timestamp("2026-11-29T05:00:00"),
        "state": admin_pb2.DEAD_LETTER_STATE_OPEN,
    }
    return admin_pb2.DeadLetter(**(values | fields))


def progress(*counts: tuple[int, int, int], finish: bool = True) -> list[Any]:
    """Stream messages (done, total, requeued); the last one finished unless `finish` is False."""
    messages = [
        admin_pb2.ReprocessDeadLettersResponse(done=d, total=t, requeued=r) for d, t, r in counts
    ]
    messages[-1].finished = finish
    return messages


def stderr_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
