"""`conveyor relay` (run the relay) and `conveyor relay replay` (republish kept events)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from admin.cli.durations import parse_duration, parse_since
from admin.cli.options import (
    AUTH,
    DEFAULT_DATABASE_URL,
    DEFAULT_LOG_FORMAT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    DEFAULT_SCHEMA,
    EXIT_RESTART,
    EXIT_USAGE,
    OPS,
    SERVER,
    STARTUP,
    DatabaseUrl,
    KeyPrefix,
    LogFormat,
    LogLevel,
    RedisUrl,
    Schema,
    fail,
    redact,
    setup_logging,
)
from admin.cli.setting_options import SettingOptions, Shown, in_flags
from admin.errors import AdminError
from admin.ops.settings import RELAY_GRPC_ADDR, StartupSettings, ops_settings
from conveyor import database, wire
from conveyor.telemetry import ROLE_RELAY
from relay.settings import RelaySettings

if TYPE_CHECKING:  # the relay's engine loads when a command runs, not for `conveyor dlq ...`
    from admin.ops.scrape import ProcessMetrics
    from admin.ops.settings import OpsSettings
    from relay.replay import ReplayResult

log = logging.getLogger(__name__)
app = typer.Typer(help="Publish outbox events to Redis Streams.", no_args_is_help=False)

RELAY = SettingOptions(
    RelaySettings,
    envvar_prefix="CONVEYOR_RELAY_",
    shown={
        "database_url": Shown(envvar="CONVEYOR_DATABASE_URL"),
        "redis_url": Shown(envvar="CONVEYOR_REDIS_URL"),
        "key_prefix": Shown(envvar="CONVEYOR_KEY_PREFIX"),
        "schemas": Shown(flag="--schema", envvar="CONVEYOR_SCHEMA"),
        "dependency_timeout": Shown(envvar="CONVEYOR_DEPENDENCY_TIMEOUT"),
        "wait_replicas": Shown(envvar="CONVEYOR_WAIT_REPLICAS"),
        "wait_timeout": Shown(envvar="CONVEYOR_WAIT_TIMEOUT"),
    },
    programmatic=(
        "cleanup_interval",
        "cleanup_batch",
        "backoff_initial",
        "backoff_max",
        "monitor_interval",
        "heartbeat_interval",
    ),
)
"""The options of `conveyor relay`, one per field of RelaySettings but those listed."""


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    schema: list[str] = RELAY.option("schemas"),
    database_url: str = RELAY.option("database_url"),
    redis_url: str = RELAY.option("redis_url"),
    key_prefix: str = RELAY.option("key_prefix"),
    batch_size: int = RELAY.option("batch_size"),
    concurrency: int = RELAY.option("concurrency"),
    poll_interval: str = RELAY.option("poll_interval"),
    gather_delay: str = RELAY.option("gather_delay"),
    listen: bool = RELAY.option("listen"),
    retention: str = RELAY.option("retention"),
    dependency_timeout: str = RELAY.option("dependency_timeout"),
    wait_replicas: int = RELAY.option("wait_replicas"),
    wait_timeout: str = RELAY.option("wait_timeout"),
    log_level: LogLevel = DEFAULT_LOG_LEVEL,
    log_format: LogFormat = DEFAULT_LOG_FORMAT,
    grpc_addr: str = SERVER.option("grpc_addr", default=RELAY_GRPC_ADDR),
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
    """Run the relay: drain each schema's outbox into its topic streams until SIGTERM.

    Serves grpc.health.v1.Health and conveyor.v1.AdminService on --grpc-addr meanwhile.
    """
    if ctx.invoked_subcommand is not None:
        return
    from admin.cli import startup
    from admin.ops import scrape
    from admin.ops.process import tune_for_throughput

    setup_logging(log_level, log_format)
    try:
        ops = ops_settings(
            grpc_addr=grpc_addr or RELAY_GRPC_ADDR,
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
        settings = RelaySettings(
            database_url=database_url,
            redis_url=redis_url,
            schemas=tuple(schema),
            key_prefix=key_prefix,
            batch_size=batch_size,
            concurrency=concurrency,
            poll_interval=parse_duration(poll_interval, RELAY.flag("poll_interval")),
            gather_delay=parse_duration(gather_delay, RELAY.flag("gather_delay")),
            listen=listen,
            retention=parse_duration(retention, RELAY.flag("retention")),
            dependency_timeout=parse_duration(dependency_timeout, RELAY.flag("dependency_timeout")),
            wait_replicas=wait_replicas,
            wait_timeout=parse_duration(wait_timeout, RELAY.flag("wait_timeout")),
        )
        timeout = StartupSettings(
            parse_duration(startup_timeout, STARTUP.flag("startup_timeout"))
        ).startup_timeout
    except ValueError as exc:
        fail(in_flags(str(exc), RELAY, OPS, SERVER, AUTH, STARTUP), EXIT_USAGE)
    needs = startup.Needs(
        RELAY, database_url, redis_url, key_prefix, settings.schemas, ops, timeout=timeout
    )
    startup.check(needs)
    try:
        telemetry = scrape.configure(
            "conveyor-relay", ops, role=ROLE_RELAY, key_prefix=settings.key_prefix
        )
    except ValueError as exc:  # CONVEYOR_TRACE_SAMPLE_RATIO
        fail(str(exc), EXIT_USAGE)
    tune_for_throughput()
    startup.run(lambda started: _serve(settings, ops, telemetry, started), needs)


async def _serve(
    settings: RelaySettings,
    ops: OpsSettings,
    telemetry: ProcessMetrics,
    started: Callable[[], None],
) -> None:
    from admin.catalog import RelayRegistry
    from admin.catalog.layouts import CatalogLayouts
    from admin.ops import runtime
    from admin.ops.probes import RelayProbe
    from relay import Relay
    from relay.errors import LayoutChanged
    from relay.registry import process_name

    relay = Relay(settings, registry=RelayRegistry, layouts=CatalogLayouts)
    plane = runtime.OpsPlane(
        ops,
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        key_prefix=settings.key_prefix,
        probe=RelayProbe(relay, ops.stall_timeout),
        schemas=settings.schemas,
        metrics=telemetry.reader,
        gauges=telemetry.gauges,
        name=process_name(),
        dependency_timeout=settings.dependency_timeout,
    )

    def running() -> None:
        started()
        log.info(
            "relay started: schemas=%s database=%s redis=%s batch_size=%d concurrency=%d "
            "gather_delay=%gs",
            ",".join(settings.schemas),
            redact(settings.database_url),
            redact(settings.redis_url),
            settings.batch_size,
            settings.concurrency,
            settings.gather_delay,
        )

    async with telemetry.serving():  # bound before the pipeline creates anything
        try:
            await runtime.serve(plane, relay, started=running)
        except LayoutChanged as exc:
            fail(str(exc), EXIT_RESTART)
    published = sum(f.published for f in relay.forwarders.values())
    log.info("relay stopped after the batches in flight: published=%d", published)


@app.command("replay")
def replay_command(
    since: Annotated[
        str,
        typer.Option(help="Republish rows published at or after this time (ISO 8601 or e.g. 2h)."),
    ],
    schema: Schema = DEFAULT_SCHEMA,
    topic: Annotated[str | None, typer.Option(help="Only this topic.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be republished.")] = False,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Republish outbox rows kept after publishing (see --retention), e.g. after Redis lost data."""
    from admin import migrations
    from admin.ops import observability

    try:
        moment = parse_since(since)
        database.validate_schema(schema)
        wire.validate_prefix(key_prefix)
        if topic is not None:
            wire.validate_topic(topic)
        observability.sample_ratio(os.environ)  # a usage error, before any I/O
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        asyncio.run(migrations.ensure_at_head(database_url, schema))
    except AdminError as exc:
        fail(exc.message)
    # events_replayed goes over OTLP when configured, flushed as the command ends.
    observability.configure("conveyor-relay-replay")  # its ratio was checked above
    result = asyncio.run(
        _replay(database_url, redis_url, key_prefix, schema, moment, topic, dry_run, as_json)
    )
    if as_json:
        summary = {
            "schema": schema,
            "since": moment.isoformat(),
            "topic": topic,
            "dry_run": dry_run,
            "matched": result.matched,
            "published": result.published,
            "by_stream": dict(result.by_stream),
        }
        print(json.dumps(summary))
        return
    verb = "would republish" if dry_run else "republished"
    console = Console(highlight=False, soft_wrap=True)  # lines whole at any width, as when piped
    console.print(
        f"{verb} {result.matched} events of schema {schema} published since {moment.isoformat()}",
        markup=False,
    )
    for stream, n in sorted(result.by_stream.items()):
        console.print(f"  {stream}: {n}", markup=False)


async def _replay(
    database_url: str,
    redis_url: str,
    prefix: str,
    schema: str,
    since: datetime,
    topic: str | None,
    dry_run: bool,
    quiet: bool,
) -> ReplayResult:
    import asyncpg

    from admin.catalog.layouts import layouts
    from conveyor import redis_client
    from relay.metrics import RelayMetrics
    from relay.publisher import StreamPublisher
    from relay.replay import replay
    from relay.store import count_replayable

    named = database.server_settings(database_url, "relay replay", schema)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, server_settings=named)
    client = await redis_client.open(redis_url)
    try:
        total = await count_replayable(pool, schema, since, topic)
        console = Console(stderr=True)
        with Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet or not console.is_terminal,  # off a terminal it leaves a blank line
            transient=True,
        ) as progress:
            task = progress.add_task("replay", total=total)
            result = await replay(
                pool,
                StreamPublisher(client, prefix, layouts=await layouts(pool, prefix)),
                schema,
                since=since,
                topic=topic,
                dry_run=dry_run,
                on_progress=lambda n: progress.advance(task, n),
                metrics=None if dry_run else RelayMetrics(),
            )
    finally:
        await client.aclose()
        await pool.close()
    return result
