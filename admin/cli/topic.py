"""`conveyor topic`: the layouts of a deployment's topics. `partition` splits a topic into N
stream partitions by a hash of the aggregate id (or changes it), `unpartition` makes it one
stream again; `list` and `show` say how topics are laid out and what their streams hold.

A change of the partition count moves later events of an aggregate to another stream, so it is
refused while a relay or consumer of the deployment runs, or while the topic's streams hold
entries not every group acknowledged, unless --force (docs/operations.md, Partitioned topics)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from admin.cli.options import (
    DEFAULT_DATABASE_URL,
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    EXIT_PRECONDITION,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    DatabaseUrl,
    KeyPrefix,
    RedisUrl,
    fail,
    redact,
)
from admin.cli.tables import add_column, add_row, fitted, list_table
from admin.errors import AdminError, DatabaseUnavailable, SchemaNotReady
from conveyor import layouts, wire

if TYPE_CHECKING:
    from admin.cli.topic_state import TopicState

app = typer.Typer(
    help="Partitioned topics: split a topic's stream into partitions by aggregate id.",
    no_args_is_help=True,
)

T = TypeVar("T")

Topic = Annotated[str, typer.Argument(help="The topic, e.g. orders.", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Change the partition count even while relays or consumers of the deployment run "
        "or the topic's streams hold unacknowledged entries (those stay where they are).",
    ),
]


def _checked(topic: str, key_prefix: str) -> None:
    try:
        wire.validate_topic(topic)
        wire.validate_prefix(key_prefix)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def _run(database_url: str, redis_url: str | None, work: Awaitable[T]) -> T:
    """Run `work` after checking the catalog is at head; failures become one line and a code."""
    import asyncpg
    from redis.exceptions import RedisError

    from admin import migrations

    try:
        asyncio.run(migrations.ensure_at_head(database_url))
        return asyncio.run(work)  # type: ignore[arg-type]
    except SchemaNotReady as exc:
        fail(exc.message, EXIT_PRECONDITION)
    except DatabaseUnavailable as exc:
        fail(exc.message, EXIT_UNAVAILABLE)
    except AdminError as exc:
        fail(exc.message, EXIT_USAGE)
    except RedisError as exc:
        fail(f"Redis at {redact(redis_url or '')}: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        fail(f"PostgreSQL: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    finally:
        if asyncio.iscoroutine(work):
            work.close()  # never started when the check failed


class _Servers:
    """A catalog pool and, when asked for, a Redis client, closed together."""

    def __init__(self, database_url: str, redis_url: str | None) -> None:
        self._database_url, self._redis_url = database_url, redis_url
        self.pool: Any = None
        self.redis: Any = None

    async def __aenter__(self) -> _Servers:
        import asyncpg

        from conveyor import redis_client

        self.pool = await asyncpg.create_pool(self._database_url, min_size=1, max_size=1)
        if self._redis_url is not None:
            self.redis = redis_client.connect(self._redis_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        await self.pool.close()


def _layout_dict(topic: str, layout: layouts.Layout | None) -> dict[str, Any]:
    if layout is None:
        return {"topic": topic, "partitions": None}
    return {
        "topic": topic,
        "partitions": layout.partitions,
        "ordered": layout.ordered,
        "on_dead_letter": layout.on_dead_letter,
        "version": layout.version,
    }


@app.command("list")
def list_command(
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    as_json: Json = False,
) -> None:
    """List the deployment's partitioned topics (every other topic has one stream)."""
    from admin.cli.topic_state import read_layouts

    _checked("x", key_prefix)

    async def work() -> dict[str, layouts.Layout]:
        async with _Servers(database_url, None) as servers:
            return await read_layouts(servers.pool, key_prefix)

    found = _run(database_url, None, work())
    if as_json:
        print(json.dumps([_layout_dict(t, layout) for t, layout in found.items()], indent=2))
        return
    console = Console(highlight=False)
    if not found:
        console.print(f"no partitioned topics in deployment {key_prefix}", markup=False)
        return
    table = list_table(f"{len(found)} partitioned topic{'' if len(found) == 1 else 's'}")
    for name, right in (("topic", False), ("partitions", True), ("order", False)):
        add_column(table, name, right=right)
    add_column(table, "on dead letter")
    add_column(table, "version", right=True)
    for topic, layout in found.items():
        order = "ordered" if layout.ordered else "unordered"
        add_row(table, topic, str(layout.partitions), order, layout.on_dead_letter,
                str(layout.version))  # fmt: skip
    console.print(fitted(table, console.width))


@app.command("show")
def show(
    topic: Topic,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    as_json: Json = False,
) -> None:
    """Show a topic's layout and, per stream (partition), its entries, dead letters and each
    group's pending, undelivered and retry entries."""
    from admin.cli.topic_state import read_layouts, topic_state

    _checked(topic, key_prefix)

    async def work() -> TopicState:
        async with _Servers(database_url, redis_url) as servers:
            found = await read_layouts(servers.pool, key_prefix)
            return await topic_state(servers.redis, key_prefix, topic, found)

    state = _run(database_url, redis_url, work())
    if as_json:
        out = _layout_dict(topic, state.layout)
        out["streams"] = [
            {
                "stream": s.keys.events,
                "partition": s.keys.partition,
                "entries": s.length,
                "dead_letters": s.dead_letters,
                "waiting": s.unacknowledged,
                "groups": [
                    {
                        "group": g.group,
                        "pending": g.pending,
                        "undelivered": g.undelivered,
                        "retry_entries": g.retry_entries,
                    }
                    for g in s.groups
                ],
            }
            for s in state.streams
        ]
        print(json.dumps(out, indent=2))
        return
    _print_state(state)


def _print_state(state: TopicState) -> None:
    console = Console(highlight=False)
    layout = state.layout
    if layout is None:
        head = f"topic {state.topic}: unpartitioned (one stream)"
    else:
        order = "ordered" if layout.ordered else "unordered"
        head = (
            f"topic {state.topic}: {layout.partitions} partitions, {order}, on dead letter "
            f"{layout.on_dead_letter}, layout version {layout.version}"
        )
    console.print(head, markup=False)
    table = list_table()
    add_column(table, "stream")
    for name in ("entries", "dead letters", "waiting"):
        add_column(table, name, right=True)
    add_column(table, "groups", wrap=True)
    for s in state.streams:
        groups = ", ".join(
            f"{g.group} {g.pending}/{g.undelivered}/{g.retry_entries}" for g in s.groups
        )
        add_row(table, s.keys.events, str(s.length), str(s.dead_letters),
                str(s.unacknowledged), groups or "-")  # fmt: skip
    console.print(fitted(table, console.width))
    if any(s.groups for s in state.streams):
        console.print("groups: name pending/undelivered/retry entries", markup=False)


def _policy(value: str | None) -> str | None:
    if value is not None and value not in layouts.DEAD_LETTER_POLICIES:
        fail(
            f"--on-dead-letter {value[:40]!r} must be {' or '.join(layouts.DEAD_LETTER_POLICIES)}",
            EXIT_USAGE,
        )
    return value


@app.command("partition")
def partition(
    topic: Topic,
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions",
            help=f"Stream partitions, 1-{wire.MAX_PARTITIONS}; an aggregate's events all go to "
            "partition crc32(aggregate id) mod N.",
            show_default=False,
        ),
    ],
    ordered: Annotated[
        bool | None,
        typer.Option(
            "--ordered/--unordered",
            help="Whether consumer groups apply each aggregate's events in order. Default: as "
            "the topic has it (unordered for a new layout).",
            show_default=False,
        ),
    ] = None,
    on_dead_letter: Annotated[
        str | None,
        typer.Option(
            "--on-dead-letter",
            help="park (a dead letter holds its aggregate's later events, ordered topics) or "
            "pass. Default: as the topic has it (park for a new layout).",
            show_default=False,
        ),
    ] = None,
    force: Force = False,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    as_json: Json = False,
) -> None:
    """Split a topic into --partitions streams, or change its layout. A new partition count
    is refused (exit 6) while a relay or consumer of the deployment runs or the topic's streams
    hold unacknowledged entries, unless --force."""
    _checked(topic, key_prefix)
    if not 1 <= partitions <= wire.MAX_PARTITIONS:
        fail(f"--partitions must be 1-{wire.MAX_PARTITIONS}, not {partitions}", EXIT_USAGE)
    _policy(on_dead_letter)
    _change(
        topic,
        partitions,
        ordered,
        on_dead_letter,
        force=force,
        servers=(database_url, redis_url, key_prefix),
        as_json=as_json,
    )


@app.command("unpartition")
def unpartition(
    topic: Topic,
    force: Force = False,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    key_prefix: KeyPrefix = DEFAULT_PREFIX,
    as_json: Json = False,
) -> None:
    """Make a partitioned topic one stream again (its layout removed); refused as a new
    partition count is."""
    _checked(topic, key_prefix)
    _change(
        topic,
        None,
        None,
        None,
        force=force,
        servers=(database_url, redis_url, key_prefix),
        as_json=as_json,
    )


def _change(
    topic: str,
    partitions: int | None,
    ordered: bool | None,
    on_dead_letter: str | None,
    *,
    force: bool,
    servers: tuple[str, str, str],
    as_json: bool,
) -> None:
    from admin.cli import topic_change

    database_url, redis_url, prefix = servers
    outcome = _run(
        database_url,
        redis_url,
        topic_change.change(
            _Servers(database_url, redis_url),
            prefix,
            topic,
            partitions,
            ordered,
            on_dead_letter,
            force=force,
        ),
    )
    if outcome.refused is not None:
        fail(outcome.refused, EXIT_PRECONDITION)
    if as_json:
        out = _layout_dict(topic, outcome.after)
        out["changed"] = outcome.changed
        out["previous_partitions"] = None if outcome.before is None else outcome.before.partitions
        print(json.dumps(out, indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    for line in outcome.lines():
        console.print(line, markup=False)
