"""`conveyor dlq|status|trace|health|metrics` against an in-process server with a fake AdminService.

What users see is asserted: the predecessor's command forms, tables, JSON, exit codes, and what
reaches the server (topic, idempotency key, bearer token).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from typer.testing import CliRunner, Result

from admin.cli import dlq as dlq_cli
from admin.cli import monitoring as ops_cli
from admin.cli import reprocessing
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


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    admin, health_servicer = FakeAdmin(), health.HealthServicer()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield Served(f"127.0.0.1:{port}", admin, health_servicer)
    server.stop(None)


@pytest.fixture
def fake(served: Served) -> FakeAdmin:
    """The fake AdminService, with no calls recorded and nothing to answer yet."""
    served.admin.calls.clear()
    served.admin.answers.clear()
    served.admin.errors.clear()
    return served.admin


@pytest.fixture
def run(served: Served) -> Callable[..., Result]:
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


def _ts(text: str) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return ts


def _letter(entry_id: str = ENTRY, **fields: Any) -> admin_pb2.DeadLetter:
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
        "create_time": _ts("2026-11-29T05:00:00"),
        "state": admin_pb2.DEAD_LETTER_STATE_OPEN,
    }
    return admin_pb2.DeadLetter(**(values | fields))


def _progress(*counts: tuple[int, int, int], finish: bool = True) -> list[Any]:
    """Stream messages (done, total, requeued); the last one finished unless `finish` is False."""
    messages = [
        admin_pb2.ReprocessDeadLettersResponse(done=d, total=t, requeued=r) for d, t, r in counts
    ]
    messages[-1].finished = finish
    return messages


def _stderr_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_seed_list_form_sends_topic_identity_and_the_token(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse(dead_letters=[_letter()])

    result = run("dlq", "list", "--stream", "identity.dlq", "--count", "20")

    assert result.exit_code == 0, result.output
    (request,) = fake.requests("ListDeadLetters")
    assert request.filter.topic == "identity"
    assert request.page_size == 20
    assert fake.calls[0].metadata["authorization"] == f"Bearer {TOKEN}"
    for shown in (
        ENTRY,
        "identity.user_registered",
        "mailer",
        "max_attempts",
        "open",
        "SMTPError: mail server said 451 [/] try",
        "2026-11-29T05:00:00Z",
    ):
        assert shown in result.stdout
    assert "second line" not in result.stdout  # the error is cut to its first line


@pytest.mark.parametrize(
    "flags",
    [
        ["--stream", "conveyor:{identity}:dlq"],
        ["--topic", "identity"],
        ["--stream", "tenant7:{identity}:dlq"],
    ],
)
def test_stream_keys_and_topic_name_the_topic(fake: FakeAdmin, run: Any, flags: list[str]) -> None:
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse()

    result = run("dlq", "list", *flags)

    assert result.exit_code == 0, result.output
    assert "no dead letters match" in result.stdout
    assert fake.requests("ListDeadLetters")[0].filter.topic == "identity"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--stream", "Identity!"], "invalid topic 'Identity!'"),
        (["list", "--stream", "conveyor:{identity}:events"], "conveyor:{identity}:dlq"),
        (["list", "--reason", "tired"], "unknown dead-letter reason 'tired'"),
        (["list", "--since", "yesterday"], "invalid --since"),
        (["inspect", "--stream", "identity", "--id", "abc"], "invalid --id 'abc'"),
        # Arabic-Indic digits: \d takes them, Redis and the catalog do not.
        (["inspect", "--stream", "identity", "--id", "\u0661\u0662-\u0663"], "invalid --id"),
        (["reprocess", "--stream", "identity", "--id", f"{2**64}-0"], "invalid --id"),
        (["reprocess", "--stream", "identity", "--id", ENTRY, "--group", "g"], "not both"),
        (["reprocess", "--stream", "identity", "--id", ENTRY, "--idempotency-key", " "], "blank"),
        (["report", "--stream", "identity", "--target", " "], "--target"),
    ],
)
def test_bad_input_exits_2_before_any_call(
    fake: FakeAdmin, run: Any, args: list[str], message: str
) -> None:
    result = run("dlq", *args)

    assert result.exit_code == 2, result.output
    assert _stderr_line(result).startswith("conveyor: error: ")
    assert message in result.stderr
    assert fake.calls == []


def test_list_json_holds_the_fields_and_sends_every_filter(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse(
        dead_letters=[_letter()], next_page_token="p2"
    )

    result = run(
        "dlq",
        "list",
        "--stream",
        "identity.dlq",
        "--json",
        "--event-type",
        "identity.x",
        "--reason",
        "max_attempts",
        "--group",
        "mailer",
        "--error",
        "451",
        "--since",
        "2h",
        "--until",
        "2026-11-29T06:00:00Z",
        "--state",
        "open",
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["next_page_token"] == "p2"
    (letter,) = data["dead_letters"]
    assert {k: letter[k] for k in ("entry_id", "reason", "create_time")} == {
        "entry_id": ENTRY,
        "reason": "DEAD_LETTER_REASON_MAX_ATTEMPTS",
        "create_time": "2026-11-29T05:00:00Z",
    }
    f = fake.requests("ListDeadLetters")[0].filter
    assert (f.topic, f.event_type, f.group, f.error_contains, f.reason, f.state) == (
        "identity",
        "identity.x",
        "mailer",
        "451",
        dead_letter_pb2.DEAD_LETTER_REASON_MAX_ATTEMPTS,
        admin_pb2.DEAD_LETTER_STATE_OPEN,
    )
    assert f.HasField("since")
    assert f.until.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 29, 6, tzinfo=UTC)


def _pages(request: Any) -> admin_pb2.ListDeadLettersResponse:
    page, following = {"": (0, "p2"), "p2": (1, "p3"), "p3": (2, "")}[request.page_token]
    letter = _letter(f"1700000000000-{page}")
    return admin_pb2.ListDeadLettersResponse(dead_letters=[letter], next_page_token=following)


def test_all_follows_every_page_and_one_page_hints_the_next(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ListDeadLetters"] = _pages

    one = run("dlq", "list", "--stream", "identity", "--count", "1")
    assert one.exit_code == 0, one.output
    assert "--page-token p2" in one.stdout

    fake.calls.clear()
    every = run("dlq", "list", "--stream", "identity", "--count", "1", "--all", "--json")
    assert every.exit_code == 0, every.output
    assert len(json.loads(every.stdout)["dead_letters"]) == 3
    assert [r.page_token for r in fake.requests("ListDeadLetters")] == ["", "p2", "p3"]


def _inspected(payload_json: str) -> admin_pb2.GetDeadLetterResponse:
    return admin_pb2.GetDeadLetterResponse(
        dead_letter=_letter(),
        payload_json=payload_json,
        payload=b"\x0a\x03abc",
        payload_type_url="type.googleapis.com/conveyor.identity.v1.UserRegistered",
        traceback='Traceback (most recent call last):\n  File "mailer.py", line 9\nSMTPError',
        actions=[
            admin_pb2.AuditRecord(
                time=_ts("2026-11-29T05:10:00"),
                principal="alice",
                action="reprocess",
                target_ids=[ENTRY],
                outcome="ok",
            )
        ],
    )


def test_seed_inspect_form_shows_payload_traceback_and_actions(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetDeadLetter"] = _inspected('{"user_id": "u-42"}')

    result = run("dlq", "inspect", "--stream", "identity.dlq", "--id", ENTRY)

    assert result.exit_code == 0, result.output
    (request,) = fake.requests("GetDeadLetter")
    assert (request.topic, request.entry_id) == ("identity", ENTRY)
    for shown in (
        '"user_id": "u-42"',
        'File "mailer.py", line 9',
        "alice",
        "host-1",
        "0b8f6c1e-53a4-4b9e-9a57-1d1b0c7f3a11",
        "2026-11-29T05:00:00.000Z",
    ):
        assert shown in result.stdout

    fake.answers["GetDeadLetter"] = _inspected("")  # a payload of a type the server does not know
    shown = run("dlq", "inspect", "--stream", "identity", "--id", ENTRY)
    as_json = json.loads(
        run("dlq", "inspect", "--stream", "identity", "--id", ENTRY, "--json").stdout
    )
    assert "CgNhYmM=" in shown.stdout
    assert "conveyor.identity.v1.UserRegistered" in shown.stdout
    assert (as_json["dead_letter"]["attempts"], as_json["payload"]) == (5, "CgNhYmM=")
    assert as_json["actions"][0]["principal"] == "alice"


def test_seed_reprocess_form_shows_counts_and_sends_a_fresh_key(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = _progress((0, 1, 0), (1, 1, 1))

    result = run("dlq", "reprocess", "--stream", "identity.dlq", "--id", ENTRY)

    assert result.exit_code == 0, result.output
    (request,) = fake.requests("ReprocessDeadLetters")
    assert (request.topic, list(request.entry_ids), request.dry_run) == ("identity", [ENTRY], False)
    key = str(uuid.UUID(request.idempotency_key))
    assert f"--idempotency-key {key}" in result.stderr  # printed, so the user can repeat it
    assert "requeued 1, duplicates 0, skipped 0 (1 of 1 dead letters of topic identity)" in (
        result.stdout
    )


def test_reprocess_json_prints_final_counts_with_the_given_key(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = _progress((1, 2, 1), (2, 2, 1))

    result = run(
        "dlq",
        "reprocess",
        "--stream",
        "identity",
        "--id",
        ENTRY,
        "--id",
        "1700000000001-0",
        "--idempotency-key",
        "k-1",
        "--rate-limit",
        "50",
        "--dry-run",
        "--json",
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["requeued"], data["total"], data["finished"]) == ("1", "2", True)
    assert (data["idempotency_key"], data["dry_run"], data["topic"]) == ("k-1", True, "identity")
    (request,) = fake.requests("ReprocessDeadLetters")
    assert (request.idempotency_key, request.rate_limit, request.dry_run) == ("k-1", 50.0, True)
    assert list(request.entry_ids) == [ENTRY, "1700000000001-0"]


def test_reprocess_by_filter_needs_yes_without_a_terminal(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = _progress((3, 3, 3))

    refused = run("dlq", "reprocess", "--stream", "identity", "--reason", "max_attempts")
    assert refused.exit_code == 2
    assert "--yes" in _stderr_line(refused)
    assert fake.calls == []

    done = run("dlq", "reprocess", "--stream", "identity", "--reason", "max_attempts", "--yes")
    assert done.exit_code == 0, done.output
    (request,) = fake.requests("ReprocessDeadLetters")
    assert list(request.entry_ids) == []
    assert request.filter.reason == dead_letter_pb2.DEAD_LETTER_REASON_MAX_ATTEMPTS
    assert "requeued 3" in done.stdout


def test_reprocess_by_filter_on_a_terminal_asks_with_the_count(
    fake: FakeAdmin, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reprocessing, "_stdin_is_tty", lambda: True)
    fake.answers["ReprocessDeadLetters"] = _progress((4, 4, 4))

    declined = run("dlq", "reprocess", "--stream", "identity", "--group", "mailer", input="n\n")
    assert declined.exit_code == 1
    assert "Reprocess 4 dead letters of topic identity" in declined.output
    assert [r.dry_run for r in fake.requests("ReprocessDeadLetters")] == [True]

    fake.calls.clear()
    accepted = run("dlq", "reprocess", "--stream", "identity", "--group", "mailer", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    preview, real = fake.requests("ReprocessDeadLetters")
    assert (preview.dry_run, real.dry_run) == (True, False)
    assert preview.idempotency_key != real.idempotency_key


def test_reprocess_cut_short_or_stalled_exits_1(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = _progress((1, 5, 1), finish=False)

    result = run(
        "dlq", "reprocess", "--stream", "identity", "--id", ENTRY, "--idempotency-key", "k-9"
    )

    assert result.exit_code == 1
    assert "--idempotency-key k-9" in result.stderr.splitlines()[-1]

    def stall(request: Any) -> Iterator[Any]:
        time.sleep(1.5)
        yield from _progress((1, 1, 1))

    fake.answers["ReprocessDeadLetters"] = stall
    stalled = run("dlq", "reprocess", "--stream", "identity", "--id", ENTRY, "--timeout", "0.5")
    assert stalled.exit_code == 1
    assert "DEADLINE_EXCEEDED: no answer from" in stalled.stderr.splitlines()[-1]


def test_resolve_needs_a_reason_before_any_call(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ResolveDeadLetters"] = admin_pb2.ResolveDeadLettersResponse(resolved=2)

    missing = run("dlq", "resolve", "--stream", "identity.dlq", "--id", ENTRY)
    blank = run("dlq", "resolve", "--stream", "identity.dlq", "--id", ENTRY, "--reason", "  ")
    assert (missing.exit_code, blank.exit_code) == (2, 2)
    assert "--reason is required" in _stderr_line(missing)
    assert fake.calls == []

    done = run(
        "dlq",
        "resolve",
        "--stream",
        "identity.dlq",
        "--id",
        ENTRY,
        "--id",
        "1700000000001-0",
        "--reason",
        "fixed by hand",
    )
    assert done.exit_code == 0, done.output
    assert "resolved 2 of 2" in done.stdout
    (request,) = fake.requests("ResolveDeadLetters")
    assert (request.topic, request.reason) == ("identity", "fixed by hand")


def test_seed_report_form_shows_tables_and_a_histogram(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetDeadLetterReport"] = admin_pb2.GetDeadLetterReportResponse(
        total=12,
        by_event_type=[admin_pb2.CountByKey(key="identity.user_registered", count=12)],
        by_reason=[
            admin_pb2.CountByKey(key="max_attempts", count=9),
            admin_pb2.CountByKey(key="decode_error", count=3),
        ],
        by_group=[admin_pb2.CountByKey(key="mailer", count=12)],
        fingerprints=[
            admin_pb2.ErrorFingerprint(
                error_class="SMTPError", message="mail server said <n>", count=9
            )
        ],
        histogram=[
            admin_pb2.HourCount(hour_time=_ts("2026-11-29T04:00:00"), count=3),
            admin_pb2.HourCount(hour_time=_ts("2026-11-29T05:00:00"), count=9),
        ],
        success_rate=0.975,
        window_start_time=_ts("2026-11-28T06:00:00"),
        window_end_time=_ts("2026-11-29T06:00:00"),
    )

    result = run("dlq", "report", "--stream", "identity.dlq", "--hours", "24")
    as_json = run("dlq", "report", "--stream", "identity.dlq", "--json")

    assert result.exit_code == 0, result.output
    assert {(r.topic, r.hours) for r in fake.requests("GetDeadLetterReport")} == {("identity", 24)}
    for shown in (
        "12 dead letters in topic identity",
        "success rate: 97.50 %",
        "75.0 %",
        "mail server said <n>",
        "2026-11-29T05:00Z",
        "█" * 40,
    ):
        assert shown in result.stdout
    assert "█" * 14 in result.stdout.split("2026-11-29T04:00Z")[1].splitlines()[0]
    assert json.loads(as_json.stdout)["by_reason"][1] == {"key": "decode_error", "count": "3"}


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
    assert _stderr_line(result) == message
    assert result.stdout == ""


def test_without_a_token_unauthenticated_says_how(fake: FakeAdmin, run: Any) -> None:
    fake.errors["GetStatus"] = (grpc.StatusCode.UNAUTHENTICATED, "no credential")

    result = run("status", CONVEYOR_ADMIN_TOKEN=None)

    assert result.exit_code == 5
    assert "authorization" not in fake.calls[0].metadata
    assert "set $CONVEYOR_ADMIN_TOKEN or use --token-file" in _stderr_line(result)


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
    line = _stderr_line(result)
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
    assert _stderr_line(unknown).startswith("conveyor: error: NOT_FOUND: ")


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
        snapshot_time=_ts("2026-11-29T05:00:00"),
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
                create_time=_ts("2026-11-29T05:00:00"),
            ),
            stream_entries=[
                admin_pb2.StreamRecord(
                    stream="conveyor:{identity}:events", entry_id="1700000000000-5"
                )
            ],
            ledger=[admin_pb2.LedgerRecord(schema="public", group="mailer", result="success")],
            dead_letters=[_letter()],
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
    assert "NOT_FOUND: nothing is known" in _stderr_line(nothing)


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
