"""conveyor.v1.AdminService: the ops plane's RPCs over the catalog, Redis and this process."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import grpc
from google.protobuf.message import DecodeError
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.exceptions import RedisError

from admin.catalog import dead_letters as catalog
from admin.catalog import reports, reprocess
from admin.catalog.audit import AuditLog
from admin.catalog.dead_letters import DeadLetterQuery, DeadLetterRecord
from admin.errors import AdminError, FailedPrecondition, InvalidInput, NotFound
from admin.ops import convert
from admin.ops.auth import current_principal
from admin.ops.payloads import PayloadTypes
from admin.ops.status import Snapshot
from conveyor import wire
from conveyor.v1 import admin_pb2, admin_pb2_grpc, event_pb2

log = logging.getLogger(__name__)
R = TypeVar("R")

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (RedisError, grpc.StatusCode.UNAVAILABLE),
    (OSError, grpc.StatusCode.UNAVAILABLE),
    (asyncpg.PostgresConnectionError, grpc.StatusCode.UNAVAILABLE),
    (asyncpg.InterfaceError, grpc.StatusCode.UNAVAILABLE),
)
"""The one place errors become status codes."""


def rpc(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map the ops plane's errors to gRPC status codes with a message naming the problem."""

    @functools.wraps(method)
    async def call(self: Any, request: Any, context: Any) -> R:
        try:
            return await method(self, request, context)
        except (AdminError, RedisError, OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:  # fmt: skip
            code = next((c for kind, c in _CODES if isinstance(exc, kind)), None)
            if code is None:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method.__name__)
            message = exc.message if isinstance(exc, AdminError) else f"{type(exc).__name__}: {exc}"
            await context.abort(code, message)
            raise AssertionError("unreachable") from exc  # abort raises

    return call


@dataclass(frozen=True)
class AdminContext:
    """What the servicer works with."""

    pool: asyncpg.Pool
    redis: Any
    key_prefix: str
    audit: AuditLog
    token_key: bytes
    """Signs list page tokens; the same on every process behind one address."""
    snapshot: Callable[[], Snapshot]
    metrics: InMemoryMetricReader | None
    schemas: Callable[[], Awaitable[Sequence[str]]]
    """Application schemas to look in for outbox rows and ledgers (TraceEvent)."""
    payload_types: PayloadTypes = field(default_factory=PayloadTypes)
    """Decodes payloads to JSON (GetDeadLetter)."""


def _principal() -> str:
    principal = current_principal.get()
    return principal.name if principal is not None else "anonymous"


def _topic(topic: str) -> str:
    try:
        return wire.validate_topic(topic)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="topic", value=topic[:100]) from None


def query_of(
    f: admin_pb2.DeadLetterFilter, prefix: str, topic: str | None = None
) -> DeadLetterQuery:
    """A catalog query from a request's filter, over the dead letters of the deployment with key
    prefix `prefix`."""
    return DeadLetterQuery(
        topic=topic if topic is not None else (f.topic or None),
        prefix=prefix,
        event_type=f.event_type or None,
        reason=wire.reason_name(f.reason) if f.reason else None,
        group=f.group or None,
        error_contains=f.error_contains or None,
        since=f.since.ToDatetime(convert.UTC) if f.HasField("since") else None,
        until=f.until.ToDatetime(convert.UTC) if f.HasField("until") else None,
        state=convert.state_name(f.state) if f.state else None,
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Every AdminService RPC; reads come from the snapshot, the catalog and Redis."""

    def __init__(self, ctx: AdminContext) -> None:
        self._c = ctx

    @rpc
    async def GetMetrics(self, request: Any, context: Any) -> admin_pb2.GetMetricsResponse:
        reader = self._c.metrics
        return convert.metrics_response(reader.get_metrics_data() if reader else None)

    @rpc
    async def GetStatus(self, request: Any, context: Any) -> admin_pb2.GetStatusResponse:
        return convert.status_response(self._c.snapshot())

    @rpc
    async def ListDeadLetters(self, request: Any, context: Any) -> Any:
        query = query_of(request.filter, self._c.key_prefix)
        records, token = await catalog.list_dead_letters(
            self._c.pool, query, page_size=request.page_size,
            page_token=request.page_token or None, token_key=self._c.token_key,
        )  # fmt: skip
        return admin_pb2.ListDeadLettersResponse(
            dead_letters=[convert.dead_letter(r) for r in records], next_page_token=token or ""
        )

    @rpc
    async def GetDeadLetter(self, request: Any, context: Any) -> Any:
        topic = _topic(request.topic)
        entry_id = catalog.parse_entry_id(request.entry_id)
        record = await catalog.get_dead_letter(self._c.pool, topic, entry_id,
                                               prefix=self._c.key_prefix)  # fmt: skip
        if record is None:
            raise NotFound(f"no dead letter {entry_id} on topic {topic}", kind="dead letter",
                           ids=[entry_id])  # fmt: skip
        response = admin_pb2.GetDeadLetterResponse(dead_letter=convert.dead_letter(record))
        await self._fill_entry(response, record)
        targets = [entry_id] + ([record.event_id] if record.event_id else [])
        for action in await catalog.audit_for(self._c.pool, targets, prefix=self._c.key_prefix):
            response.actions.append(convert.audit_record(action))
        return response

    async def _fill_entry(self, response: Any, record: DeadLetterRecord) -> None:
        async with asyncio.timeout(2):
            entries = await self._c.redis.xrange(record.dlq_stream, record.entry_id,
                                                 record.entry_id)  # fmt: skip
        if not entries:
            return  # trimmed from the stream: the catalog record is all there is
        fields = entries[0][1]
        response.traceback = fields.get(wire.DL_TRACEBACK, b"").decode(errors="replace")
        response.traceparent = fields.get(wire.DL_TRACEPARENT, b"").decode(errors="replace")
        raw = fields.get(wire.F_EVENT)
        if raw is None:
            return
        try:
            event = event_pb2.Event.FromString(raw)
        except DecodeError:
            response.payload = raw  # not an Event at all: the bytes as they came
            return
        response.payload, response.payload_type_url = event.data.value, event.data.type_url
        response.payload_json = self._c.payload_types.to_json(event)

    @rpc
    async def ResolveDeadLetters(self, request: Any, context: Any) -> Any:
        topic = _topic(request.topic)
        ids = [catalog.parse_entry_id(i) for i in request.entry_ids]
        if not ids:
            raise InvalidInput("name at least one entry id", field="entry_ids", value="")
        if not request.reason.strip():
            raise InvalidInput("resolving needs a reason", field="reason", value="")
        known = {r.entry_id for r in await self._get(topic, ids)}
        missing = [i for i in ids if i not in known]
        if missing:
            raise NotFound(f"no dead letters {', '.join(missing[:20])} on topic {topic}",
                           kind="dead letter", ids=missing)  # fmt: skip
        principal = _principal()
        async with self._c.pool.acquire() as conn, conn.transaction():
            resolved = await catalog.resolve(
                conn, topic, ids, reason=request.reason, principal=principal,
                prefix=self._c.key_prefix,
            )  # fmt: skip
            await self._c.audit.record(principal=principal, action="resolve", target_ids=ids,
                                       reason=request.reason, outcome=f"resolved {resolved}",
                                       conn=conn)  # fmt: skip
        return admin_pb2.ResolveDeadLettersResponse(resolved=resolved)

    @rpc
    async def GetDeadLetterReport(self, request: Any, context: Any) -> Any:
        topic = _topic(request.topic)
        report = await reports.dead_letter_report(self._c.pool, topic, request.hours or 24,
                                                  prefix=self._c.key_prefix)  # fmt: skip
        return convert.report_response(report)

    @rpc
    async def TraceEvent(self, request: Any, context: Any) -> Any:
        schemas = await self._c.schemas()
        trace = await reports.trace_event(
            self._c.pool, self._c.redis, request.event_id, schemas=schemas,
            key_prefix=self._c.key_prefix,
        )  # fmt: skip
        return convert.trace_response(trace)

    @rpc
    async def ReprocessDeadLetters(self, request: Any, context: Any) -> None:
        topic = _topic(request.topic)
        ids = [catalog.parse_entry_id(i) for i in request.entry_ids]
        query = None if ids else query_of(request.filter, self._c.key_prefix, topic=topic)
        records = await self._select(topic, ids, query)
        if ids:
            reprocess.check_reprocessable(records)

        async def progress(p: reprocess.Progress) -> None:
            await context.write(admin_pb2.ReprocessDeadLettersResponse(
                done=p.done, total=p.total, requeued=p.requeued, duplicates=p.duplicates,
                skipped=p.skipped, finished=p.finished,
            ))  # fmt: skip

        await reprocess.reprocess(
            self._c.pool, self._c.redis, topic=topic, records=records,
            key_prefix=self._c.key_prefix, principal=_principal(), audit=self._c.audit,
            ledger_schemas=await reprocess.group_ledgers(self._c.pool, self._c.key_prefix),
            dry_run=request.dry_run, idempotency_key=request.idempotency_key or None,
            request_hash=reprocess.request_fingerprint(topic, ids, query, self._c.key_prefix),
            rate_limit=request.rate_limit, on_progress=progress,
        )  # fmt: skip

    async def _get(self, topic: str, ids: list[str]) -> list[DeadLetterRecord]:
        return await catalog.get_dead_letters(self._c.pool, topic, ids, prefix=self._c.key_prefix)

    async def _select(
        self, topic: str, ids: list[str], query: DeadLetterQuery | None
    ) -> list[DeadLetterRecord]:
        """The dead letters a reprocess names: by id (all must exist), or every match of the
        filter, oldest first."""
        if ids:
            records = await self._get(topic, ids)
            missing = sorted(set(ids) - {r.entry_id for r in records})
            if missing:
                raise NotFound(f"no dead letters {', '.join(missing[:20])} on topic {topic}",
                               kind="dead letter", ids=missing)  # fmt: skip
            return records
        assert query is not None
        found: list[DeadLetterRecord] = []
        token: str | None = None
        while len(found) < catalog.MAX_ENTRY_IDS:
            page, token = await catalog.list_dead_letters(
                self._c.pool, query, page_size=catalog.MAX_PAGE_SIZE, page_token=token,
                token_key=self._c.token_key,
            )  # fmt: skip
            found += page
            if token is None:
                break
        return sorted(found, key=lambda r: r.id)
