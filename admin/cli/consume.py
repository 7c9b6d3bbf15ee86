"""`conveyor consume`: run a consumer group member with the handlers of a router."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from admin.cli.durations import parse_duration
from admin.cli.options import (
    DEFAULT_DATABASE_URL,
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    EXIT_USAGE,
    AllowUnauthenticated,
    DatabaseUrl,
    DescriptorSets,
    GrpcAddr,
    KeyPrefix,
    LogLevel,
    MtlsWriters,
    PageTokenKey,
    RedisUrl,
    Reflection,
    StallTimeout,
    TlsCert,
    TlsClientCa,
    TlsKey,
    TokensFile,
    fail,
    redact,
    setup_logging,
)
from admin.errors import AdminError, OpsPlaneUnavailable

if TYPE_CHECKING:  # the consumer's modules load when it runs, not for `conveyor dlq ...`
    from admin.ops.settings import OpsSettings
    from consumers import ConsumerSettings, Router
from conveyor import database, wire

log = logging.getLogger(__name__)


def load_router(spec: str) -> Router:
    """The Router named by `module.path:attribute`; ValueError saying what is wrong."""
    from consumers import Router

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"invalid --router {spec!r}: use module.path:attribute, e.g. app.events:router"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current project is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"invalid --router {spec!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    router = getattr(module, attr, None)
    if not isinstance(router, Router):
        found = "nothing" if router is None else type(router).__name__
        raise ValueError(
            f"invalid --router {spec!r}: {module_name}.{attr} is {found}, not a Router"
        )
    return router


def consume(
    group: Annotated[str, typer.Option(envvar="CONVEYOR_GROUP", help="Consumer group.")],
    router: Annotated[
        str, typer.Option(envvar="CONVEYOR_ROUTER", help="Handlers: module.path:attribute.")
    ],
    topic: Annotated[
        list[str] | None,
        typer.Option(
            envvar="CONVEYOR_TOPIC", help="Topic to consume; repeatable. Default: the router's."
        ),
    ] = None,
    consumer: Annotated[
        str | None, typer.Option(envvar="CONVEYOR_CONSUMER", help="Member name. Default: host-pid.")
    ] = None,
    ledger_schema: Annotated[
        str, typer.Option(envvar="CONVEYOR_LEDGER_SCHEMA", help="Schema of the event ledger.")
    ] = database.DEFAULT_SCHEMA,
    mode: Annotated[
        str, typer.Option(envvar="CONVEYOR_MODE", help="exactly-once or at-least-once.")
    ] = "exactly-once",
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    batch_size: Annotated[
        int, typer.Option(envvar="CONVEYOR_BATCH_SIZE", help="Entries per read.")
    ] = 1000,
    partitions: Annotated[
        int, typer.Option(envvar="CONVEYOR_PARTITIONS", help="Database connections per topic.")
    ] = 2,
    max_attempts: Annotated[
        int, typer.Option(envvar="CONVEYOR_MAX_ATTEMPTS", help="Attempts before a dead letter.")
    ] = 5,
    retry_backoff: Annotated[
        str, typer.Option(envvar="CONVEYOR_RETRY_BACKOFF", help="First retry delay.")
    ] = "1s",
    retry_backoff_max: Annotated[
        str, typer.Option(envvar="CONVEYOR_RETRY_BACKOFF_MAX", help="Longest retry delay.")
    ] = "5m",
    claim_idle: Annotated[
        str,
        typer.Option(
            envvar="CONVEYOR_CLAIM_IDLE", help="Reclaim entries idle this long on others."
        ),
    ] = "30s",
    recreate_lost_group: Annotated[
        bool,
        typer.Option(
            envvar="CONVEYOR_RECREATE_LOST_GROUP", help="At-least-once: recreate a lost group at 0."
        ),
    ] = False,
    max_stream_length: Annotated[
        int | None,
        typer.Option(
            envvar="CONVEYOR_MAX_STREAM_LENGTH", help="Hard cap per stream (trims counted)."
        ),
    ] = None,
    ledger_retention: Annotated[
        str, typer.Option(envvar="CONVEYOR_LEDGER_RETENTION", help="Ledger rows kept.")
    ] = "30d",
    dead_letter_retention: Annotated[
        str,
        typer.Option(envvar="CONVEYOR_DEAD_LETTER_RETENTION", help="Resolved dead letters kept."),
    ] = "30d",
    max_event_bytes: Annotated[
        int, typer.Option(envvar="CONVEYOR_MAX_EVENT_BYTES", help="Larger events are dead letters.")
    ] = wire.MAX_EVENT_BYTES,
    housekeeping_interval: Annotated[
        str, typer.Option(envvar="CONVEYOR_HOUSEKEEPING_INTERVAL", help="Trims and clean-ups.")
    ] = "60s",
    idle_consumer_timeout: Annotated[
        str,
        typer.Option(
            envvar="CONVEYOR_IDLE_CONSUMER_TIMEOUT",
            help="Remove members idle this long (none pending).",
        ),
    ] = "1h",
    log_level: LogLevel = "info",
    grpc_addr: GrpcAddr = None,
    reflection: Reflection = True,
    tokens_file: TokensFile = None,
    allow_unauthenticated: AllowUnauthenticated = False,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_client_ca: TlsClientCa = None,
    mtls_writer: MtlsWriters = None,
    descriptor_set: DescriptorSets = None,
    stall_timeout: StallTimeout = "60s",
    page_token_key: PageTokenKey = None,
) -> None:
    """Consume topics as a member of a group, running the router's handlers until SIGTERM.

    Serves grpc.health.v1.Health and conveyor.v1.AdminService on --grpc-addr meanwhile.
    """
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from admin.ops import observability
    from admin.ops.process import tune_for_throughput
    from admin.ops.settings import ops_settings
    from consumers import ConsumerSettings
    from consumers.settings import default_consumer_name

    setup_logging(log_level)
    try:
        ops = ops_settings(
            grpc_addr=grpc_addr or "127.0.0.1:50052", reflection=reflection,
            tokens_file=tokens_file, allow_unauthenticated=allow_unauthenticated,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            mtls_writers=mtls_writer or (),
            descriptor_sets=descriptor_set or (),
            stall_timeout=parse_duration(stall_timeout), page_token_key=page_token_key,
        )  # fmt: skip
        handlers = load_router(router)
        settings = ConsumerSettings(
            group=group,
            topics=tuple(topic) if topic else handlers.topics,
            database_url=database_url,
            redis_url=redis_url,
            consumer=consumer or default_consumer_name(),
            ledger_schema=ledger_schema,
            mode=mode,  # type: ignore[arg-type]  # validated by ConsumerSettings
            key_prefix=key_prefix,
            batch_size=batch_size,
            partitions=partitions,
            max_attempts=max_attempts,
            retry_backoff=parse_duration(retry_backoff),
            retry_backoff_max=parse_duration(retry_backoff_max),
            claim_idle=parse_duration(claim_idle),
            recreate_lost_group=recreate_lost_group,
            max_stream_length=max_stream_length,
            ledger_retention=parse_duration(ledger_retention),
            dead_letter_retention=parse_duration(dead_letter_retention),
            max_event_bytes=max_event_bytes,
            housekeeping_interval=parse_duration(housekeeping_interval),
            idle_consumer_timeout=parse_duration(idle_consumer_timeout),
        )
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    _require_schemas(settings)
    reader = InMemoryMetricReader()
    observability.configure(f"conveyor-consumer-{settings.group}", readers=[reader])
    tune_for_throughput()
    try:
        asyncio.run(_serve(handlers, settings, ops, reader))
    except OpsPlaneUnavailable as exc:
        fail(exc.message)


def _require_schemas(settings: ConsumerSettings) -> None:
    from admin import migrations

    try:
        if settings.exactly_once:
            asyncio.run(migrations.ensure_at_head(settings.database_url, settings.ledger_schema))
        else:
            migrations.require_head(migrations.check_catalog(settings.database_url))
    except AdminError as exc:
        fail(exc.message)


async def _serve(
    router: Router, settings: ConsumerSettings, ops: OpsSettings, reader: Any
) -> None:
    from admin.ops import runtime
    from admin.ops.probes import ConsumerProbe
    from consumers import Consumer

    async with Consumer(router, settings) as consumer:
        own = [settings.ledger_schema] if settings.exactly_once else []
        plane = runtime.OpsPlane(
            ops, database_url=settings.database_url, redis_url=settings.redis_url,
            key_prefix=settings.key_prefix, probe=ConsumerProbe(consumer, ops.stall_timeout),
            schemas=own, metrics=reader,
        )  # fmt: skip
        log.info(
            "consumer started: group=%s consumer=%s topics=%s mode=%s ledger_schema=%s "
            "database=%s redis=%s",
            settings.group, settings.consumer, ",".join(settings.topics), settings.mode,
            settings.ledger_schema, redact(settings.database_url), redact(settings.redis_url),
        )  # fmt: skip
        await runtime.serve(plane, stop=consumer.stop, run=consumer.run)
        log.info("consumer stopped after the batch in flight: group=%s consumer=%s",
                 settings.group, settings.consumer)  # fmt: skip
