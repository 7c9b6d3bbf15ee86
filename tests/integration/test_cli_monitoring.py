"""`conveyor` server errors and exit codes, tokens, an unreachable target, and `health`, `status`,
`trace` and `metrics`, against an in-process server with a fake AdminService."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from conveyor.v1 import admin_pb2
from tests.integration.cli_support import (
    ENTRY,
    FakeAdmin,
    Served,
    dead_letter,
    fixture_fake,  # noqa: F401 - a pytest fixture
    fixture_run,  # noqa: F401 - a pytest fixture
    fixture_served,  # noqa: F401 - a pytest fixture
    stderr_line,
    timestamp,
)

_S = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (_S.INVALID_ARGUMENT, 2),
        (_S.NOT_FOUND, 3),
        (_S.UNAUTHENTICATED, 5),
        (_S.PERMISSION_DENIED, 5),
        (_S.FAILED_PRECONDITION, 6),
        (_S.INTERNAL, 1),
    ],
)
def test_server_errors_print_one_line_and_map_to_exit_codes(
    fake: FakeAdmin, run: Any, code: grpc.StatusCode, exit_code: int
) -> None:
    fake.errors["GetDeadLetter"] = (code, "dead letter 1700000000000-0 said no")

    result = run("dlq", "inspect", "--stream", "identity", "--id", ENTRY)

    assert result.exit_code == exit_code
    message = f"conveyor: error: {code.name}: dead letter 1700000000000-0 said no"
    assert stderr_line(result) == message
    assert result.stdout == ""


def test_without_a_token_unauthenticated_says_how(fake: FakeAdmin, run: Any) -> None:
    fake.errors["GetStatus"] = (grpc.StatusCode.UNAUTHENTICATED, "no credential")

    result = run("status", CONVEYOR_ADMIN_TOKEN=None)

    assert result.exit_code == 5
    assert "authorization" not in fake.calls[0].metadata
    assert "set $CONVEYOR_ADMIN_TOKEN or use --token-file" in stderr_line(result)


def test_token_file_beats_the_environment(fake: FakeAdmin, run: Any, tmp_path: Path) -> None:
    fake.answers["GetMetrics"] = admin_pb2.GetMetricsResponse()
    (tmp_path / "token").write_text("from-file\n")

    result = run("metrics", "--token-file", str(tmp_path / "token"))
    missing = run("metrics", "--token-file", str(tmp_path / "nope"))

    assert result.exit_code == 0, result.output
    assert fake.calls[0].metadata["authorization"] == "Bearer from-file"
    assert missing.exit_code == 2
    assert len(fake.calls) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("args", [["dlq", "list"], ["status"], ["health"]])
def test_unreachable_target_exits_1_quickly(run: Any, args: list[str]) -> None:
    target = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()

    result = run(*args, "--target", target, "--timeout", "2")

    assert time.monotonic() - started < 4
    assert result.exit_code == 1
    line = stderr_line(result)
    assert line.startswith("conveyor: error: UNAVAILABLE: ")
    assert f"(target {target})" in line


def test_health_exits_like_grpc_health_probe(served: Served, run: Any) -> None:
    served.health.set("", health_pb2.HealthCheckResponse.SERVING)
    served.health.set("conveyor.relay.public", health_pb2.HealthCheckResponse.NOT_SERVING)

    serving = run("health")
    not_serving = run("health", "conveyor.relay.public", "--json")
    unknown = run("health", "conveyor.nothing")

    assert (serving.exit_code, serving.stdout) == (0, "SERVING\n")
    assert not_serving.exit_code == 4
    expected = {"service": "conveyor.relay.public", "status": "NOT_SERVING"}
    assert json.loads(not_serving.stdout) == expected
    assert unknown.exit_code == 3
    # grpc's own health servicer sends no message: the CLI says what it asked for.
    line = stderr_line(unknown)
    assert line.startswith("conveyor: error: NOT_FOUND: unknown health service 'conveyor.nothing'")
    assert "conveyor.liveness" in line and "(no message)" not in line


def test_health_watch_prints_each_change_until_the_server_goes(run: Any) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("conveyor.liveness", health_pb2.HealthCheckResponse.SERVING)

    def change_then_stop() -> None:
        time.sleep(0.5)
        servicer.set("conveyor.liveness", health_pb2.HealthCheckResponse.NOT_SERVING)
        time.sleep(0.5)
        server.stop(None)

    threading.Thread(target=change_then_stop, daemon=True).start()
    result = run("health", "conveyor.liveness", "--watch", "--target", f"127.0.0.1:{port}")

    assert result.exit_code == 1  # the stream broke: the server is gone
    statuses = [line.split()[1] for line in result.stdout.splitlines()]
    assert statuses == ["SERVING", "NOT_SERVING"]


def test_status_shows_components_redis_backlog_and_lag(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetStatus"] = admin_pb2.GetStatusResponse(
        overall=admin_pb2.COMPONENT_STATE_DEGRADED,
        components=[
            admin_pb2.ComponentStatus(
                name="conveyor.consumer.identity.mailer",
                state=admin_pb2.COMPONENT_STATE_DEGRADED,
                reasons=["lag 75 s > 60 s"],
            )
        ],
        redis=admin_pb2.RedisStatus(
            up=True,
            ping_latency_seconds=0.0004,
            used_memory_bytes=3 * 1024 * 1024,
            aof_enabled=True,
            aof_last_rewrite_status="ok",
            run_id="abc123",
        ),
        outboxes=[admin_pb2.OutboxStatus(schema="public", backlog=140, oldest_age_seconds=2.5)],
        groups=[
            admin_pb2.GroupStatus(
                topic="identity",
                group="mailer",
                lag_entries=900,
                lag_seconds=75,
                pending=12,
                consumers=2,
                mode="exactly-once",
            )
        ],
        snapshot_time=timestamp("2026-11-29T05:00:00"),
    )

    shown = run("status")
    as_json = run("status", "--json")

    assert shown.exit_code == 0, shown.output
    for text in (
        "overall: DEGRADED",
        "conveyor.consumer.identity.mailer",
        "lag 75 s > 60 s",
        "0.40 ms",
        "3.0 MiB",
        "abc123",
        "140",
        "exactly-once",
        "900",
        "75.0 s",
    ):
        assert text in shown.stdout
    data = json.loads(as_json.stdout)
    assert data["groups"][0]["pending"] == "12"
    assert data["components"][0]["reasons"] == ["lag 75 s > 60 s"]


def test_trace_shows_what_is_known_and_exits_3_when_nothing_is(fake: FakeAdmin, run: Any) -> None:
    event_id = "0b8f6c1e-53a4-4b9e-9a57-1d1b0c7f3a11"
    fake.answers["TraceEvent"] = lambda request: (
        admin_pb2.TraceEventResponse(
            outbox=admin_pb2.OutboxRecord(
                schema="public",
                id=41,
                topic="identity",
                event_type="identity.user_registered",
                create_time=timestamp("2026-11-29T05:00:00"),
            ),
            stream_entries=[
                admin_pb2.StreamRecord(
                    stream="conveyor:{identity}:events", entry_id="1700000000000-5"
                )
            ],
            ledger=[admin_pb2.LedgerRecord(schema="public", group="mailer", result="success")],
            dead_letters=[dead_letter()],
            unreachable=["redis: timed out"],
        )
        if request.event_id == event_id
        else admin_pb2.TraceEventResponse()
    )

    found = run("trace", event_id)
    as_json = run("trace", event_id, "--json")
    nothing = run("trace", "6f1d0a34-0000-4000-8000-000000000000")

    assert found.exit_code == 0, found.output
    for text in ("schema public row 41", "1700000000000-5", "success", ENTRY, "redis: timed out"):
        assert text in found.stdout
    assert json.loads(as_json.stdout)["outbox"]["id"] == "41"
    assert nothing.exit_code == 3
    assert "NOT_FOUND: nothing is known" in stderr_line(nothing)


def test_metrics_lists_instruments_and_points(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetMetrics"] = admin_pb2.GetMetricsResponse(
        metrics=[
            admin_pb2.Metric(
                name="events_processed",
                kind=admin_pb2.METRIC_KIND_COUNTER,
                points=[
                    admin_pb2.MetricPoint(
                        attributes={"stream": "identity", "result": "success"}, value=1234
                    )
                ],
            ),
            admin_pb2.Metric(
                name="event_processing_duration",
                unit="s",
                kind=admin_pb2.METRIC_KIND_HISTOGRAM,
                points=[admin_pb2.MetricPoint(count=4, sum=0.02)],
            ),
        ]
    )

    shown = run("metrics")
    as_json = run("metrics", "--json")

    assert shown.exit_code == 0, shown.output
    for text in (
        "events_processed",
        "result=success, stream=identity",
        "1234",
        "histogram",
        "count 4, sum 0.02, mean 0.005",
    ):
        assert text in shown.stdout
    assert json.loads(as_json.stdout)["metrics"][0]["points"][0]["value"] == 1234
