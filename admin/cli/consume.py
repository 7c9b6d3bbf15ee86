"""`conveyor consume`: run a consumer group member with the handlers of a router."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from admin.cli.durations import parse_duration
from admin.cli.options import (
    AUTH,
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    EXIT_USAGE,
    OPS,
    SERVER,
    STARTUP,
    LogFormat,
    LogLevel,
    fail,
    redact,
    setup_logging,
)
from admin.cli.setting_options import SettingOptions, Shown, in_flags
from admin.cli.start_point import START_HELP, parse_start
from admin.ops.settings import CONSUMER_GRPC_ADDR, StartupSettings, ops_settings
from consumers.settings import ConsumerSettings
from conveyor.telemetry import ROLE_CONSUMER

if TYPE_CHECKING:  # the consumer's engine loads when it runs, not for `conveyor dlq ...`
    from admin.ops.scrape import ProcessMetrics
    from admin.ops.settings import OpsSettings
    from consumers import Router

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


CONSUMER = SettingOptions(
    ConsumerSettings,
    shown={
        "topics": Shown(flag="--topic", envvar="CONVEYOR_TOPIC"),
        "start": Shown(help=START_HELP),
    },
    programmatic=("block", "heartbeat_interval", "db_backoff_max"),
)
"""The options of `conveyor consume`, one per field of ConsumerSettings but those listed."""


def consume(
    group: str = CONSUMER.option("group"),
    router: str = typer.Option(
        ...,
        envvar="CONVEYOR_ROUTER",
        help="Handlers, as `module.path:attribute` naming a `consumers.Router` (the current "
        "directory is importable).",
    ),
    topic: list[str] | None = CONSUMER.option("topics", default=None),
    consumer: str | None = CONSUMER.option("consumer", default=None),
    ledger_schema: str = CONSUMER.option("ledger_schema"),
    mode: str = CONSUMER.option("mode"),
    start: str = CONSUMER.option("start"),
    database_url: str = CONSUMER.option("database_url"),
    redis_url: str = CONSUMER.option("redis_url"),
    key_prefix: str = CONSUMER.option("key_prefix"),
    batch_size: int = CONSUMER.option("batch_size"),
    partitions: int = CONSUMER.option("partitions"),
    gather_delay: str = CONSUMER.option("gather_delay"),
    max_attempts: int = CONSUMER.option("max_attempts"),
    retry_backoff: str = CONSUMER.option("retry_backoff"),
    retry_backoff_max: str = CONSUMER.option("retry_backoff_max"),
    claim_idle: str = CONSUMER.option("claim_idle"),
    lease_ttl: str = CONSUMER.option("lease_ttl"),
    recreate_lost_group: bool = CONSUMER.option("recreate_lost_group"),
    max_stream_length: int | None = CONSUMER.option("max_stream_length"),
    ledger_retention: str = CONSUMER.option("ledger_retention"),
    dead_letter_retention: str = CONSUMER.option("dead_letter_retention"),
    max_event_bytes: int = CONSUMER.option("max_event_bytes"),
    housekeeping_interval: str = CONSUMER.option("housekeeping_interval"),
    idle_consumer_timeout: str = CONSUMER.option("idle_consumer_timeout"),
    dependency_timeout: str = CONSUMER.option("dependency_timeout"),
    log_level: LogLevel = DEFAULT_LOG_LEVEL,
    log_format: LogFormat = DEFAULT_LOG_FORMAT,
    grpc_addr: str = SERVER.option("grpc_addr", default=CONSUMER_GRPC_ADDR),
    reflection: bool = SERVER.option("reflection"),
    tokens_file: Path | None = AUTH.option("tokens_file"),
    allow_unauthenticated: bool = AUTH.option("allow_unauthenticated"),
    tls_cert: Path | None = SERVER.option("tls_cert"),
    tls_key: Path | None = SERVER.option("tls_key"),
    tls_client_ca: Path | None = SERVER.option("tls_client_ca"),
    mtls_writer: list[str] | None = AUTH.option("mtls_scopes", default=None),
    descriptor_set: list[Path] | None = OPS.option("payload_types", default=None),
    stall_timeout: str = OPS.option("stall_timeout"),
    page_token_key: str | None = OPS.option("page_token_key"),
    metrics_addr: str | None = OPS.option("metrics_addr"),
    startup_timeout: str = STARTUP.option("startup_timeout"),
) -> None:
    """Consume topics as a member of a group, running the router's handlers until SIGTERM.

    Serves grpc.health.v1.Health and conveyor.v1.AdminService on --grpc-addr meanwhile.
    """
    from admin.cli import startup
    from admin.ops import scrape
    from admin.ops.process import tune_for_throughput
    from consumers.settings import default_consumer_name

    setup_logging(log_level, log_format)
    try:
        ops = ops_settings(
            grpc_addr=grpc_addr or CONSUMER_GRPC_ADDR,
            reflection=reflection,
            tokens_file=tokens_file,
            allow_unauthenticated=allow_unauthenticated,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            mtls_writers=mtls_writer or (),
            descriptor_sets=descriptor_set or (),
            stall_timeout=parse_duration(stall_timeout, OPS.flag("stall_timeout")),
            page_token_key=page_token_key,
            metrics_addr=metrics_addr,
        )
        handlers = load_router(router)
        settings = ConsumerSettings(
            group=group,
            topics=tuple(topic) if topic else handlers.topics,
            database_url=database_url,
            redis_url=redis_url,
            consumer=consumer or default_consumer_name(),
            ledger_schema=ledger_schema,
            mode=mode,  # type: ignore[arg-type]  # validated by ConsumerSettings
            start=parse_start(start),
            key_prefix=key_prefix,
            batch_size=batch_size,
            partitions=partitions,
            gather_delay=parse_duration(gather_delay, CONSUMER.flag("gather_delay")),
            max_attempts=max_attempts,
            retry_backoff=parse_duration(retry_backoff, CONSUMER.flag("retry_backoff")),
            retry_backoff_max=parse_duration(retry_backoff_max, CONSUMER.flag("retry_backoff_max")),
            claim_idle=parse_duration(claim_idle, CONSUMER.flag("claim_idle")),
            lease_ttl=parse_duration(lease_ttl, CONSUMER.flag("lease_ttl")),
            recreate_lost_group=recreate_lost_group,
            max_stream_length=max_stream_length,
            ledger_retention=parse_duration(ledger_retention, CONSUMER.flag("ledger_retention")),
            dead_letter_retention=parse_duration(
                dead_letter_retention, CONSUMER.flag("dead_letter_retention")
            ),
            max_event_bytes=max_event_bytes,
            housekeeping_interval=parse_duration(
                housekeeping_interval, CONSUMER.flag("housekeeping_interval")
            ),
            idle_consumer_timeout=parse_duration(
                idle_consumer_timeout, CONSUMER.flag("idle_consumer_timeout")
            ),
            dependency_timeout=parse_duration(
                dependency_timeout, CONSUMER.flag("dependency_timeout")
            ),
        )
        timeout = StartupSettings(
            parse_duration(startup_timeout, STARTUP.flag("startup_timeout"))
        ).startup_timeout
    except ValueError as exc:
        fail(in_flags(str(exc), CONSUMER, OPS, SERVER, AUTH, STARTUP), EXIT_USAGE)
    own = (settings.ledger_schema,) if settings.exactly_once else ()
    needs = startup.Needs(CONSUMER, database_url, redis_url, key_prefix, own, ops, timeout=timeout)
    startup.check(needs)
    try:
        telemetry = scrape.configure(
            f"conveyor-consumer-{settings.group}",
            ops,
            role=ROLE_CONSUMER,
            key_prefix=settings.key_prefix,
            group=settings.group,
        )
    except ValueError as exc:  # CONVEYOR_TRACE_SAMPLE_RATIO
        fail(str(exc), EXIT_USAGE)
    tune_for_throughput()
    startup.run(lambda started: _serve(handlers, settings, ops, telemetry, started, start), needs)


async def _serve(
    router: Router,
    settings: ConsumerSettings,
    ops: OpsSettings,
    telemetry: ProcessMetrics,
    started: Callable[[], None],
    start: str,
) -> None:
    from admin.catalog import ConsumerCatalog
    from admin.catalog.leases import ConsumerLeases
    from admin.ops import runtime
    from admin.ops.probes import ConsumerProbe
    from consumers import Consumer

    consumer = Consumer(router, settings, catalog=ConsumerCatalog, leases=ConsumerLeases)
    plane = runtime.OpsPlane(
        ops,
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        probe=ConsumerProbe(consumer, ops.stall_timeout),
        schemas=[settings.ledger_schema] if settings.exactly_once else [],
        metrics=telemetry.reader,
        gauges=telemetry.gauges,
        name=f"{settings.group}/{settings.consumer}",
        dependency_timeout=settings.dependency_timeout,
    )

    def running() -> None:
        started()
        log.info(
            "consumer started: group=%s consumer=%s topics=%s mode=%s ledger_schema=%s "
            "database=%s redis=%s",
            settings.group,
            settings.consumer,
            ",".join(settings.topics),
            settings.mode,
            settings.ledger_schema,
            redact(settings.database_url),
            redact(settings.redis_url),
        )

    async with telemetry.serving():  # bound before the pipeline creates anything
        await runtime.serve(plane, consumer, started=running)
    log.info(
        "consumer stopped after the batch in flight: group=%s consumer=%s",
        settings.group,
        settings.consumer,
    )
