"""conveyor.v1.AdminService: the ops plane's RPCs over the catalog, Redis and this process."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncpg
import grpc
from google.protobuf.message import DecodeError
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.exceptions import RedisError

from admin.catalog import Catalog, DeadLetterQuery, DeadLetterRecord, Progress, skips
from admin.catalog.layouts import dlq_keys
from admin.catalog.records import MAX_ENTRY_IDS, MAX_PAGE_SIZE, parse_entry_id
from admin.catalog.reprocess import check_reprocessable
from admin.catalog.requests import request_fingerprint
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


class Context(Protocol):
    """What the RPCs use of grpc.aio.ServicerContext (grpc ships no type hints)."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None: ...

    async def write(self, message: admin_pb2.ReprocessDeadLettersResponse) -> None: ...


def rpc(method: Callable[[Any, Any, Context], Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map the ops plane's errors to gRPC status codes with a message naming the problem."""

    @functools.wraps(method)
    async def call(self: Any, request: Any, context: Context) -> R:
        try:
            return await method(self, request, context)
        except (
            AdminError,
            RedisError,
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
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

    catalog: Catalog
    """The deployment's catalog: dead letters, audit, registry."""
    redis: Any
    token_key: bytes
    """Signs list page tokens; the same on every process behind one address."""
    snapshot: Callable[[], Snapshot]
    metrics: InMemoryMetricReader | None
    own_schemas: Sequence[str] = ()
    """This process's application schemas, where TraceEvent looks first for the outbox row."""
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


def _target(text: str, prefix: str) -> tuple[str, str | None]:
    """The topic a request names by id, and the dead-letter stream it narrows to: `orders`
    names every dead-letter stream of the topic (None), a dead-letter stream key of this
    deployment (`conveyor:{orders:3}:dlq`) only that one."""
    if "{" not in text:
        return _topic(text), None
    tag = wire.parse_tag(text)
    if tag is None or dlq_keys(text, tag[0], prefix) is None:
        raise InvalidInput(
            f"{text[:200]!r} is no dead-letter stream of this deployment (key prefix {prefix})",
            field="topic",
            value=text[:100],
        )
    return tag[0], text


def _unambiguous(topic: str, records: Sequence[DeadLetterRecord]) -> None:
    """InvalidInput when an entry id names dead letters of several streams of the topic
    (partitions write their dead-letter streams independently, so two can share an id)."""
    streams: dict[str, list[str]] = {}
    for r in records:
        streams.setdefault(r.entry_id, []).append(r.dlq_stream)
    for entry_id, found in streams.items():
        if len(found) > 1:
            raise InvalidInput(
                f"dead letter id {entry_id} of topic {topic} names {len(found)} dead letters, "
                f"one in each of {' and '.join(found)}: nothing done; name the one you mean by "
                f"its dead-letter stream (--stream {found[0]})",
                field="entry_ids",
                value=entry_id,
            )


def query_of(f: admin_pb2.DeadLetterFilter, topic: str | None = None) -> DeadLetterQuery:
    """A catalog query from a request's filter."""
    return DeadLetterQuery(
        topic=topic if topic is not None else (f.topic or None),
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
        self._catalog = ctx.catalog

    @rpc
    async def GetMetrics(
        self, request: admin_pb2.GetMetricsRequest, context: Context
    ) -> admin_pb2.GetMetricsResponse:
        reader = self._c.metrics
        return convert.metrics_response(reader.get_metrics_data() if reader else None)

    @rpc
    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Context
    ) -> admin_pb2.GetStatusResponse:
        response = convert.status_response(self._c.snapshot())
        response.host, response.pid = socket.gethostname(), os.getpid()
        return response

    @rpc
    async def ListProcesses(
        self, request: admin_pb2.ListProcessesRequest, context: Context
    ) -> admin_pb2.ListProcessesResponse:
        processes = await self._catalog.processes()
        return convert.processes_response(processes, self._catalog.key_prefix)

    @rpc
    async def ListDeadLetters(
        self, request: admin_pb2.ListDeadLettersRequest, context: Context
    ) -> admin_pb2.ListDeadLettersResponse:
        records, token = await self._catalog.list_dead_letters(
            query_of(request.filter),
            page_size=request.page_size,
            page_token=request.page_token or None,
            token_key=self._c.token_key,
        )
        return admin_pb2.ListDeadLettersResponse(
            dead_letters=[convert.dead_letter(r) for r in records], next_page_token=token or ""
        )

    @rpc
    async def GetDeadLetter(
        self, request: admin_pb2.GetDeadLetterRequest, context: Context
    ) -> admin_pb2.GetDeadLetterResponse:
        topic, stream = _target(request.topic, self._catalog.key_prefix)
        entry_id = parse_entry_id(request.entry_id)
        (record,) = await self._by_id(topic, [entry_id], stream=stream)  # NotFound if none
        response = admin_pb2.GetDeadLetterResponse(dead_letter=convert.dead_letter(record))
        await self._fill_entry(response, record)
        targets = [entry_id] + ([record.event_id] if record.event_id else [])
        for action in await self._catalog.audit_entries(targets):
            response.actions.append(convert.audit_record(action))
        return response

    async def _fill_entry(
        self, response: admin_pb2.GetDeadLetterResponse, record: DeadLetterRecord
    ) -> None:
        async with asyncio.timeout(2):
            entries = await self._c.redis.xrange(
                record.dlq_stream, record.entry_id, record.entry_id
            )
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
    async def ResolveDeadLetters(
        self, request: admin_pb2.ResolveDeadLettersRequest, context: Context
    ) -> admin_pb2.ResolveDeadLettersResponse:
        topic, stream = _target(request.topic, self._catalog.key_prefix)
        ids = [parse_entry_id(i) for i in request.entry_ids]
        if not ids:
            raise InvalidInput("name at least one entry id", field="entry_ids", value="")
        if not request.reason.strip():
            raise InvalidInput("resolving needs a reason", field="reason", value="")
        records = await self._by_id(topic, ids, stream=stream, request_order=True)
        resolved = set(
            await self._catalog.resolve(
                records, reason=request.reason, principal=_principal(), requested=ids
            )
        )
        left = {r.entry_id: r for r in records if r.id not in resolved}
        return admin_pb2.ResolveDeadLettersResponse(
            resolved=len(resolved),
            skips=[
                convert.skipped(skips.resolved_before(left[i]))
                for i in dict.fromkeys(ids)
                if i in left
            ],
        )

    @rpc
    async def GetDeadLetterReport(
        self, request: admin_pb2.GetDeadLetterReportRequest, context: Context
    ) -> admin_pb2.GetDeadLetterReportResponse:
        report = await self._catalog.report(_topic(request.topic), request.hours or 24)
        return convert.report_response(report)

    @rpc
    async def TraceEvent(
        self, request: admin_pb2.TraceEventRequest, context: Context
    ) -> admin_pb2.TraceEventResponse:
        trace = await self._catalog.trace(
            self._c.redis, request.event_id, own_schemas=self._c.own_schemas
        )
        return convert.trace_response(trace)

    @rpc
    async def ReprocessDeadLetters(
        self, request: admin_pb2.ReprocessDeadLettersRequest, context: Context
    ) -> None:
        topic, stream = _target(request.topic, self._catalog.key_prefix)
        ids = [parse_entry_id(i) for i in request.entry_ids]
        query = None if ids else query_of(request.filter, topic=topic)
        digest = request_fingerprint(request.topic, ids, query, self._catalog.key_prefix)
        key = request.idempotency_key
        if key and not request.dry_run:
            # A repeat is answered as the first call was, before its entries are looked at:
            # they may be resolved or gone since, and the first call did succeed.
            first = await self._catalog.answered(
                idempotency_key=key, principal=_principal(), request_hash=digest
            )
            if first is not None:
                await context.write(convert.reprocess_response(first))
                return
        if ids:
            records = await self._by_id(topic, ids, stream=stream)
        else:
            records = await self._matching(query)
        if ids:
            check_reprocessable(records)

        async def progress(p: Progress) -> None:
            await context.write(convert.reprocess_response(p))

        await self._catalog.reprocess(
            self._c.redis,
            topic=topic,
            records=records,
            principal=_principal(),
            ledger_schemas=await self._catalog.group_ledgers(),
            dry_run=request.dry_run,
            idempotency_key=key or None,
            request_hash=digest,
            rate_limit=request.rate_limit,
            on_progress=progress,
        )

    async def _by_id(
        self,
        topic: str,
        ids: list[str],
        *,
        stream: str | None = None,
        request_order: bool = False,
    ) -> list[DeadLetterRecord]:
        """The dead letters with these entry ids (in dead-letter stream `stream` only, when
        given); NotFound naming those that do not exist, in the order of `ids` with
        `request_order`, else sorted; InvalidInput when an id names dead letters of two
        streams (partitions) of the topic."""
        records = await self._catalog.dead_letters(topic, ids)
        if stream is not None:
            records = [r for r in records if r.dlq_stream == stream]
        _unambiguous(topic, records)
        known = {r.entry_id for r in records}
        if request_order:
            missing = [i for i in dict.fromkeys(ids) if i not in known]
        else:
            missing = sorted(set(ids) - known)
        if missing:
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise NotFound(
                f"no dead letters {', '.join(missing[:20])}{more} on topic {topic} of this "
                f"deployment (key prefix {self._catalog.key_prefix})",
                kind="dead letter",
                ids=missing,
            )
        return records

    async def _matching(self, query: DeadLetterQuery | None) -> list[DeadLetterRecord]:
        """Every dead letter matching the filter, oldest first."""
        assert query is not None
        found: list[DeadLetterRecord] = []
        token: str | None = None
        while len(found) < MAX_ENTRY_IDS:
            page, token = await self._catalog.list_dead_letters(
                query, page_size=MAX_PAGE_SIZE, page_token=token, token_key=self._c.token_key
            )
            found += page
            if token is None:
                break
        return sorted(found, key=lambda r: r.id)
