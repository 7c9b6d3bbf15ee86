"""Real `conveyor relay` / `conveyor consume` processes serve health and AdminService over gRPC."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor import wire
from conveyor.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.catalog_support import add, new_entry_id
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, publish
from tests.processes import run_conveyor, start_conveyor, stop, wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

READ_TOKEN, WRITE_TOKEN = "read-secret-1", "write-secret-1"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    lines = [
        f"reader read {hashlib.sha256(READ_TOKEN.encode()).hexdigest()}",
        f"writer write {hashlib.sha256(WRITE_TOKEN.encode()).hexdigest()}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def port_of(proc: object, out: list[str]) -> int:
    """Read the chosen port from the process's log (it listens on port 0)."""
    assert hasattr(proc, "stdout")
    for line in proc.stdout:  # type: ignore[attr-defined]
        out.append(line)
        m = re.search(r"gRPC listening on [\d.]+:(\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no port in the log:\n" + "".join(out))


def check(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)
        except grpc.RpcError as exc:
            return -1 if exc.code() == grpc.StatusCode.NOT_FOUND else -2


SERVING, NOT_SERVING = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
)


@pytest.fixture
def relay_with_own_redis(case: Case, tokens_file: Path) -> Iterator[tuple[int, RedisServer, Case]]:
    with RedisServer() as redis_server:
        env = case.env | {"CONVEYOR_REDIS_URL": redis_server.url}
        proc = start_conveyor(
            [
                "relay",
                "--grpc-addr",
                "127.0.0.1:0",
                "--tokens-file",
                str(tokens_file),
                "--stall-timeout",
                "2s",
            ],
            env,
        )
        out: list[str] = []
        try:
            yield port_of(proc, out), redis_server, case
        finally:
            stop(proc)


async def test_health_follows_redis_down_and_back(
    relay_with_own_redis: tuple[int, RedisServer, Case],
) -> None:
    port, redis_server, case = relay_with_own_redis
    component = f"conveyor.relay.{case.schema}"

    async def status(service: str, want: int) -> bool:
        return await asyncio.to_thread(check, port, service) == want

    await wait_until(lambda: status("", SERVING), timeout=15, what="ready")
    assert await asyncio.to_thread(check, port, component) == SERVING
    assert await asyncio.to_thread(check, port, "no.such.Service") == -1
    redis_server.stop()
    await wait_until(lambda: status(component, NOT_SERVING), timeout=15, what="redis down seen")
    assert await asyncio.to_thread(check, port, "") == NOT_SERVING
    assert await asyncio.to_thread(check, port, "conveyor.liveness") == SERVING, "alive, unready"
    redis_server.start()
    await wait_until(lambda: status(component, SERVING), timeout=20, what="back to serving")


def admin(
    port: int, token: str | None
) -> tuple[grpc.Channel, admin_pb2_grpc.AdminServiceStub, list[tuple[str, str]]]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return ch, admin_pb2_grpc.AdminServiceStub(ch), metadata  # type: ignore[no-untyped-call]


def code_of(call: object, request: object, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    try:
        result = call(request, metadata=metadata, timeout=5)  # type: ignore[operator]
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


async def test_every_admin_rpc_is_implemented_and_bad_input_gets_its_code(
    relay_with_own_redis: tuple[int, RedisServer, Case],
) -> None:
    port, _redis, _case = relay_with_own_redis
    ch, stub, md = admin(port, READ_TOKEN)
    _, _, write_md = admin(port, WRITE_TOKEN)
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    with ch:
        for method in service.methods:
            request = getattr(admin_pb2, method.input_type.name)()
            code = await asyncio.to_thread(code_of, getattr(stub, method.name), request, write_md)
            assert code != grpc.StatusCode.UNIMPLEMENTED, method.name
        bad = [
            (
                stub.GetDeadLetter,
                admin_pb2.GetDeadLetterRequest(topic="identity", entry_id="1-"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.GetDeadLetter,
                admin_pb2.GetDeadLetterRequest(topic="identity", entry_id="-1-0"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.GetDeadLetter,
                admin_pb2.GetDeadLetterRequest(topic="identity", entry_id="x" * 10_000),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.GetDeadLetter,
                admin_pb2.GetDeadLetterRequest(topic="id{x}", entry_id="1-0"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.GetDeadLetter,
                admin_pb2.GetDeadLetterRequest(topic="identity", entry_id="1-0"),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                stub.ListDeadLetters,
                admin_pb2.ListDeadLettersRequest(page_size=-1),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.ListDeadLetters,
                admin_pb2.ListDeadLettersRequest(page_size=100_000),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.ListDeadLetters,
                admin_pb2.ListDeadLettersRequest(page_token="forged.token"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.GetDeadLetterReport,
                admin_pb2.GetDeadLetterReportRequest(topic="identity", hours=100_000),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.TraceEvent,
                admin_pb2.TraceEventRequest(event_id="not-a-uuid"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for call, request, want in bad:
            assert await asyncio.to_thread(code_of, call, request, md) == want, request
        inverted = admin_pb2.ListDeadLettersRequest()
        inverted.filter.since.FromSeconds(2_000_000_000)
        inverted.filter.until.FromSeconds(1_000_000_000)
        assert (
            await asyncio.to_thread(code_of, stub.ListDeadLetters, inverted, md)
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        resolve = admin_pb2.ResolveDeadLettersRequest(topic="identity", entry_ids=["1-0"])
        assert (
            await asyncio.to_thread(code_of, stub.ResolveDeadLetters, resolve, md)
            == grpc.StatusCode.PERMISSION_DENIED
        )
        _, _, write_md = admin(port, WRITE_TOKEN)
        assert (
            await asyncio.to_thread(code_of, stub.ResolveDeadLetters, resolve, write_md)
            == grpc.StatusCode.INVALID_ARGUMENT
        ), "no reason"
        assert (
            await asyncio.to_thread(code_of, stub.GetStatus, admin_pb2.GetStatusRequest(), [])
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            await asyncio.to_thread(
                code_of,
                stub.GetStatus,
                admin_pb2.GetStatusRequest(),
                [("authorization", "Bearer nope")],
            )
            == grpc.StatusCode.UNAUTHENTICATED
        )


COMPONENT = "conveyor.consumer.identity.g"


@asynccontextmanager
async def wedged_consumer(case: Case, handler: dict[str, str], stall: str) -> AsyncIterator[int]:
    """A consumer whose handler misbehaves as `handler` (effects_router variables) says, serving
    once idle, and then given one event; yields its gRPC port."""
    await create_effects(case.pg, case.schema)
    args = [
        "consume",
        "--group",
        "g",
        "--router",
        "tests.integration.effects_router:router",
        "--ledger-schema",
        case.schema,
        "--stall-timeout",
        stall,
        "--allow-unauthenticated",
    ]
    proc = start_conveyor(args, case.env | {"TEST_EFFECTS_SCHEMA": case.schema, **handler})
    try:
        port = port_of(proc, [])
        await wait_until(lambda: _is(port, COMPONENT, SERVING), timeout=20, what="serving")
        assert await _is(port, "conveyor.liveness", SERVING)
        await publish(case.redis, case.prefix, 1)
        yield port
    finally:
        stop(proc, signal.SIGKILL)


async def _is(port: int, service: str, want: int) -> bool:
    return await asyncio.to_thread(check, port, service) == want


def _reasons(port: int) -> tuple[str, ...]:
    ch, stub, _ = admin(port, None)
    with ch:
        status = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
    (mine,) = [c for c in status.components if c.name == COMPONENT]
    return tuple(mine.reasons)


async def test_a_consumer_stuck_in_a_handler_is_reported_stalled(case: Case) -> None:
    async with wedged_consumer(case, {"TEST_HANDLER_SLEEP": "3600"}, "2s") as port:
        await wait_until(
            lambda: _is(port, COMPONENT, NOT_SERVING), timeout=20, what="the stall noticed"
        )
        assert await _is(port, "conveyor.liveness", SERVING), "stalled, but the loop runs"
        assert any(r.startswith("stalled") for r in _reasons(port)), _reasons(port)


async def test_a_blocked_event_loop_is_reported_while_health_keeps_answering(case: Case) -> None:
    """A handler that blocks the pipeline's event loop: the ops plane, on its own thread, still
    answers, names the problem, and takes liveness down once the stall timeout has passed."""
    async with wedged_consumer(case, {"TEST_HANDLER_BLOCK": "3600"}, "3s") as port:
        await wait_until(
            lambda: _is(port, COMPONENT, NOT_SERVING), timeout=20, what="the blocked loop noticed"
        )
        assert await _is(port, "", NOT_SERVING)
        assert any(r.startswith("event loop blocked") for r in _reasons(port)), _reasons(port)
        await wait_until(
            lambda: _is(port, "conveyor.liveness", NOT_SERVING),
            timeout=20,
            what="liveness down past the stall timeout",
        )


def watch_statuses(port: int, service: str, count: int) -> list[int]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
        return [int(r.status) for _, r in zip(range(count), stream, strict=False)]


async def test_watch_sees_readiness_go_at_shutdown_and_unknown_services(case: Case) -> None:
    proc = start_conveyor(["relay"], case.env)
    port = port_of(proc, [])
    await wait_until(lambda: _serving(port), timeout=15, what="ready")
    unknown = await asyncio.to_thread(watch_statuses, port, "no.such.Service", 1)
    assert unknown == [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
    watcher = asyncio.create_task(asyncio.to_thread(watch_statuses, port, "", 2))
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert await watcher == [SERVING, NOT_SERVING], "unready before the process goes"
    assert proc.wait(20) == 0


async def _serving(port: int) -> bool:
    return await asyncio.to_thread(check, port, "") == SERVING


def test_a_taken_grpc_port_fails_the_start_with_a_clear_error(case: Case) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = run_conveyor(
            ["relay", "--grpc-addr", address, "--allow-unauthenticated"], case.env, timeout=60
        )
    assert done.returncode == 8, done.stderr
    assert f"conveyor: error: cannot listen on {address} (address already in use)" in done.stderr


async def test_admin_service_sees_only_its_own_deployments_dead_letters(case: Case) -> None:
    """Another key prefix on the same database holds a dead letter with the same topic and entry
    id: this process's AdminService never lists, shows, resolves, reports or traces it."""
    entry, now = new_entry_id(), datetime.now(UTC)
    mine, theirs = [
        await add(
            case.pg,
            "identity",
            dlq_stream=wire.Keys("identity", prefix).dlq,
            dlq_entry_id=entry,
            created_at=now,
        )
        for prefix in (case.prefix, f"{case.prefix}-other")
    ]
    proc = start_conveyor(["relay", "--allow-unauthenticated"], case.env)
    try:
        ch, stub, _ = admin(port_of(proc, []), None)
        with ch:
            listed = stub.ListDeadLetters(
                admin_pb2.ListDeadLettersRequest(
                    filter=admin_pb2.DeadLetterFilter(topic="identity")
                ),
                timeout=5,
            )
            assert [d.event_id for d in listed.dead_letters] == [str(mine["event_id"])]
            shown = stub.GetDeadLetter(
                admin_pb2.GetDeadLetterRequest(topic="identity", entry_id=entry), timeout=5
            )
            assert shown.dead_letter.event_id == str(mine["event_id"])
            resolved = stub.ResolveDeadLetters(
                admin_pb2.ResolveDeadLettersRequest(
                    topic="identity", entry_ids=[entry], reason="checked"
                ),
                timeout=5,
            )
            assert resolved.resolved == 1
            report = stub.GetDeadLetterReport(
                admin_pb2.GetDeadLetterReportRequest(topic="identity", hours=1), timeout=5
            )
            assert report.total == 1
            traced = stub.TraceEvent(
                admin_pb2.TraceEventRequest(event_id=str(theirs["event_id"])), timeout=5
            )
            assert not traced.dead_letters
        states = await case.pg.fetch(
            "SELECT dlq_stream, state FROM conveyor.dead_letters WHERE dlq_entry_id = $1", entry
        )
        assert {r["dlq_stream"]: r["state"] for r in states} == {
            wire.Keys("identity", case.prefix).dlq: "resolved",
            wire.Keys("identity", f"{case.prefix}-other").dlq: "open",
        }
    finally:
        stop(proc)
        await case.pg.execute("DELETE FROM conveyor.dead_letters WHERE dlq_entry_id = $1", entry)
