"""AdminService auth on a real grpc.aio server: tokens, scopes, mTLS, denials in the audit log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from admin import migrations
from admin.catalog.audit import SUPPRESSED_ACTION, AuditLog
from admin.ops.auth import AuthInterceptor, current_principal
from admin.ops.bearer import bearer_metadata
from admin.ops.settings import AuthSettings, Scope
from admin.ops.tokens import Principal, install_sighup_reload, token_digest
from conveyor.v1 import admin_pb2, admin_pb2_grpc
from tests.pki import make_pki

GET_STATUS = "/conveyor.v1.AdminService/GetStatus"
RESOLVE = "/conveyor.v1.AdminService/ResolveDeadLetters"
REPROCESS = "/conveyor.v1.AdminService/ReprocessDeadLetters"


@pytest.fixture(scope="module")
def catalog(services: tuple[str, str]) -> str:
    migrations.upgrade_catalog(services[0])
    return services[0]


@pytest.fixture
def marker() -> str:
    """Unique text in every principal and client user agent of one test, to find its audit rows."""
    return f"authtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pool(catalog: str, marker: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(catalog, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.execute(
            "DELETE FROM conveyor.audit WHERE strpos(principal, $1) > 0 "
            "OR starts_with(detail->>'user_agent', $1)",
            marker,
        )
        await pool.close()


@dataclass
class Tokens:
    """A tokens file with a reader, a writer and an expired writer, and their tokens."""

    path: Path
    marker: str
    reader: str = field(default_factory=lambda: uuid.uuid4().hex)
    writer: str = field(default_factory=lambda: uuid.uuid4().hex)
    expired: str = field(default_factory=lambda: uuid.uuid4().hex)

    def name(self, role: str) -> str:
        return f"{role}-{self.marker}"

    def write(self, *extra: str) -> None:
        lines = [
            f"# tokens of {self.marker}",
            f"{self.name('reader')} read {token_digest(self.reader)}",
            f"{self.name('writer')} write {token_digest(self.writer)}",
            f"{self.name('expired')} write {token_digest(self.expired)} 2000-01-01T00:00:00Z",
            *extra,
        ]
        self.path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def tokens(tmp_path: Path, marker: str) -> Tokens:
    tokens = Tokens(tmp_path / "tokens", marker)
    tokens.write()
    return tokens


class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):  # type: ignore[misc]
    """Answers trivially and remembers which principal each call ran as."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Principal | None]] = []

    async def GetStatus(self, request: Any, context: Any) -> Any:
        self.calls.append(("GetStatus", current_principal.get()))
        return admin_pb2.GetStatusResponse()

    async def ResolveDeadLetters(self, request: Any, context: Any) -> Any:
        self.calls.append(("ResolveDeadLetters", current_principal.get()))
        return admin_pb2.ResolveDeadLettersResponse()

    async def ReprocessDeadLetters(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls.append(("ReprocessDeadLetters", current_principal.get()))
        for _ in range(2):
            yield admin_pb2.ReprocessDeadLettersResponse()


@dataclass
class Running:
    """A started server and a client channel to it."""

    admin: FakeAdmin
    stub: Any
    health: Any
    channel: Any


@asynccontextmanager
async def serve(
    interceptor: AuthInterceptor,
    marker: str,
    *,
    server_credentials: Any = None,
    channel_credentials: Any = None,
) -> AsyncIterator[Running]:
    """Serve FakeAdmin and health behind `interceptor`; a channel whose user agent is `marker`."""
    server = grpc.aio.server(interceptors=[interceptor])
    admin = FakeAdmin()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    options = [("grpc.primary_user_agent", marker)]
    if server_credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials)
        options.append(("grpc.ssl_target_name_override", "localhost"))
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options)
    await server.start()
    try:
        yield Running(
            admin,
            admin_pb2_grpc.AdminServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            channel,
        )
    finally:
        await channel.close()
        await server.stop(None)


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


async def _denials(pool: asyncpg.Pool, marker: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT principal, action, reason, outcome, detail, target_ids FROM conveyor.audit "
        "WHERE starts_with(detail->>'user_agent', $1) ORDER BY id",
        marker,
    )


def _interceptor(pool: asyncpg.Pool, tokens: Tokens, **audit: Any) -> AuthInterceptor:
    return AuthInterceptor(
        AuthSettings(tokens_file=tokens.path), AuditLog(pool, "conveyor", **audit)
    )


async def test_missing_malformed_unknown_and_expired_credentials_are_unauthenticated_and_audited(
    pool: asyncpg.Pool, tokens: Tokens, marker: str
) -> None:
    cases = [
        ((), "no credential"),
        ((("authorization", f"Token {tokens.writer}"),), "malformed"),
        (bearer_metadata(f"not-{tokens.writer}"), "unknown bearer token"),
        (bearer_metadata(tokens.expired), "expired"),
    ]
    async with serve(_interceptor(pool, tokens), marker) as running:
        for metadata, words in cases:
            call = running.stub.GetStatus(admin_pb2.GetStatusRequest(), metadata=metadata)
            code, details = await _code(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert words in details
            assert tokens.writer not in details
            assert tokens.expired not in details
        assert running.admin.calls == []

    rows = await _denials(pool, marker)
    assert [(r["principal"], r["reason"]) for r in rows] == [
        ("unauthenticated", "missing_credential"),
        ("unauthenticated", "malformed_credential"),
        ("unauthenticated", "unknown_token"),
        (tokens.name("expired"), "expired_token"),
    ]
    for row in rows:
        assert (row["action"], row["outcome"]) == (GET_STATUS, "unauthenticated")
        detail = json.loads(row["detail"])
        assert detail["source"] == "ipv4:127.0.0.1"
        assert detail["peer"].startswith("ipv4:127.0.0.1:")
        assert tokens.writer not in row["detail"]


async def test_a_read_token_cannot_resolve_or_reprocess_and_the_servicer_never_runs(
    pool: asyncpg.Pool, tokens: Tokens, marker: str
) -> None:
    read = bearer_metadata(tokens.reader)
    async with serve(_interceptor(pool, tokens), marker) as running:
        resolve = running.stub.ResolveDeadLetters(
            admin_pb2.ResolveDeadLettersRequest(), metadata=read
        )
        code, details = await _code(resolve)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "needs write" in details
        stream = running.stub.ReprocessDeadLetters(
            admin_pb2.ReprocessDeadLettersRequest(), metadata=read
        )
        assert (await _code(stream.read()))[0] == grpc.StatusCode.PERMISSION_DENIED
        assert running.admin.calls == []

    rows = await _denials(pool, marker)
    assert [(r["principal"], r["action"], r["outcome"], r["reason"]) for r in rows] == [
        (tokens.name("reader"), RESOLVE, "permission_denied", "insufficient_scope"),
        (tokens.name("reader"), REPROCESS, "permission_denied", "insufficient_scope"),
    ]


async def test_allowed_calls_reach_the_servicer_as_their_principal(
    pool: asyncpg.Pool, tokens: Tokens, marker: str
) -> None:
    reader = Principal(tokens.name("reader"), Scope.READ)
    writer = Principal(tokens.name("writer"), Scope.WRITE)
    async with serve(_interceptor(pool, tokens), marker) as running:
        stub = running.stub
        await stub.GetStatus(admin_pb2.GetStatusRequest(), metadata=bearer_metadata(tokens.reader))
        await stub.GetStatus(admin_pb2.GetStatusRequest(), metadata=bearer_metadata(tokens.writer))
        await stub.ResolveDeadLetters(
            admin_pb2.ResolveDeadLettersRequest(), metadata=bearer_metadata(tokens.writer)
        )
        stream = stub.ReprocessDeadLetters(
            admin_pb2.ReprocessDeadLettersRequest(), metadata=bearer_metadata(tokens.writer)
        )
        assert len([response async for response in stream]) == 2
        assert running.admin.calls == [
            ("GetStatus", reader),
            ("GetStatus", writer),
            ("ResolveDeadLetters", writer),
            ("ReprocessDeadLetters", writer),
        ]
    assert await _denials(pool, marker) == []


async def test_health_needs_no_token(pool: asyncpg.Pool, tokens: Tokens, marker: str) -> None:
    async with serve(_interceptor(pool, tokens), marker) as running:
        response = await running.health.Check(health_pb2.HealthCheckRequest(service=""))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert await _denials(pool, marker) == []


async def test_denials_from_one_source_are_rate_limited_then_summarised(
    pool: asyncpg.Pool, tokens: Tokens, marker: str
) -> None:
    now = [1000.0]
    interceptor = _interceptor(
        pool, tokens, denial_limit=5, denial_window=60.0, clock=lambda: now[0]
    )
    unknown = bearer_metadata("unknown-token")
    async with serve(interceptor, marker) as running:
        for _ in range(30):
            call = running.stub.GetStatus(admin_pb2.GetStatusRequest(), metadata=unknown)
            assert (await _code(call))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert len(await _denials(pool, marker)) == 5

        now[0] += 60.0
        call = running.stub.GetStatus(admin_pb2.GetStatusRequest(), metadata=unknown)
        assert (await _code(call))[0] == grpc.StatusCode.UNAUTHENTICATED

    rows = await _denials(pool, marker)
    assert [r["action"] for r in rows] == [GET_STATUS] * 5 + [SUPPRESSED_ACTION, GET_STATUS]
    summary = rows[5]
    assert summary["reason"] == "25 more denials suppressed"
    assert json.loads(summary["detail"])["suppressed"] == 25


async def test_a_denial_is_answered_even_when_its_audit_row_cannot_be_written(
    catalog: str, tokens: Tokens, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await asyncpg.create_pool(catalog, min_size=1, max_size=1)
    await closed.close()
    async with serve(_interceptor(closed, tokens), marker) as running:
        call = running.stub.GetStatus(admin_pb2.GetStatusRequest(), metadata=())
        assert (await _code(call))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert "could not record denial" in caplog.text


async def test_sighup_reloads_the_tokens_file(
    pool: asyncpg.Pool, tokens: Tokens, marker: str
) -> None:
    interceptor = _interceptor(pool, tokens)
    assert interceptor.store is not None
    loop = asyncio.get_running_loop()
    install_sighup_reload(loop, interceptor.store)
    fresh = uuid.uuid4().hex
    try:
        async with serve(interceptor, marker) as running:
            request = admin_pb2.GetStatusRequest()
            call = running.stub.GetStatus(request, metadata=bearer_metadata(fresh))
            assert (await _code(call))[0] == grpc.StatusCode.UNAUTHENTICATED

            tokens.write(f"{tokens.name('fresh')} read {token_digest(fresh)}")
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0.1)  # the handler runs on the loop's next turn
            await running.stub.GetStatus(request, metadata=bearer_metadata(fresh))
            assert running.admin.calls == [
                ("GetStatus", Principal(tokens.name("fresh"), Scope.READ))
            ]
            # A broken file on the next reload leaves the fresh token working.
            tokens.path.write_text("garbage\n")
            assert not interceptor.store.reload()
            await running.stub.GetStatus(request, metadata=bearer_metadata(fresh))
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


async def test_unauthenticated_mode_runs_every_call_as_anonymous_writer(
    pool: asyncpg.Pool, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = AuthSettings(allow_unauthenticated=True)
    interceptor = AuthInterceptor(settings, AuditLog(pool, "conveyor"))
    assert "for local demos only" in caplog.text
    async with serve(interceptor, marker) as running:
        await running.stub.ResolveDeadLetters(admin_pb2.ResolveDeadLettersRequest())
        assert running.admin.calls == [("ResolveDeadLetters", Principal("anonymous", Scope.WRITE))]


# --- mTLS ----------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path)


def _read(pki: Path, name: str) -> bytes:
    return (pki / name).read_bytes()


async def test_a_verified_client_certificate_authenticates_by_common_name(
    pool: asyncpg.Pool, pki: Path, marker: str
) -> None:
    server_credentials = grpc.ssl_server_credentials(
        [(_read(pki, "server.key"), _read(pki, "server.crt"))],
        root_certificates=_read(pki, "ca.crt"),
        require_client_auth=True,
    )
    settings = AuthSettings(mtls_scopes={"ops-console": Scope.WRITE})
    interceptor = AuthInterceptor(settings, AuditLog(pool, "conveyor"))
    for client, expected in (
        ("ops", Principal("cn:ops-console", Scope.WRITE)),
        ("grafana", Principal("cn:grafana", Scope.READ)),
    ):
        channel_credentials = grpc.ssl_channel_credentials(
            _read(pki, "ca.crt"), _read(pki, f"{client}.key"), _read(pki, f"{client}.crt")
        )
        async with serve(
            interceptor,
            marker,
            server_credentials=server_credentials,
            channel_credentials=channel_credentials,
        ) as running:
            await running.stub.GetStatus(admin_pb2.GetStatusRequest())
            resolve = running.stub.ResolveDeadLetters(admin_pb2.ResolveDeadLettersRequest())
            if expected.scope is Scope.WRITE:
                await resolve
            else:
                assert (await _code(resolve))[0] == grpc.StatusCode.PERMISSION_DENIED
            assert running.admin.calls[0] == ("GetStatus", expected)
    rows = await _denials(pool, marker)
    assert [(r["principal"], r["action"]) for r in rows] == [("cn:grafana", RESOLVE)]
