"""The demo's relay and consumer, and its bounded wait for its events to settle: when time runs
out, an error naming what did not arrive and the likely cause."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from admin.catalog import Catalog, ConsumerCatalog
from admin.cli.options import redact
from admin.errors import AdminError
from consumers import Consumer, ConsumerSettings, Router
from conveyor import database, redis_client, wire
from relay import Relay, RelaySettings

if TYPE_CHECKING:
    from admin.cli.demo import Names

START_LIMIT = 30.0
"""Seconds the relay and consumer get to connect and start, and to stop."""
EXAMPLES = 3
"""Pending events named in the error."""


class DemoStuck(AdminError):
    """The demo's events did not all settle (applied or dead-lettered) within its time limit."""

    def __init__(self, message: str, *, settled: int, total: int, pending: list[str]) -> None:
        super().__init__(message)
        self.settled = settled
        self.total = total
        self.pending = pending
        """Event ids still pending, oldest first."""


class Pipeline:
    """A relay of the demo's schema and a consumer of its topic, running in this process."""

    def __init__(self, names: Names, router: Router, topic: str, group: str) -> None:
        self.names = names
        self.topic = topic
        self.group = group
        common: dict[str, Any] = {
            "database_url": names.database_url,
            "redis_url": names.redis_url,
            "key_prefix": names.key_prefix,
        }
        self.relay = Relay(RelaySettings(schemas=(names.schema,), poll_interval=0.1, **common))
        self.settings = ConsumerSettings(
            group=group,
            topics=(topic,),
            ledger_schema=names.schema,
            max_attempts=3,
            retry_backoff=0.2,
            retry_backoff_max=0.5,
            block=0.1,
            **common,
        )
        self.consumer = Consumer(router, self.settings, catalog=ConsumerCatalog)
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Pipeline:
        try:
            async with asyncio.timeout(START_LIMIT):
                await self.relay.start()
                await self.consumer.start()
        except BaseException as exc:
            await self._close()
            if not isinstance(exc, TimeoutError):
                raise
            raise AdminError(
                f"the demo's relay and consumer did not start within {START_LIMIT:g} s: are "
                f"PostgreSQL at {redact(self.names.database_url)} and Redis at "
                f"{redact(self.names.redis_url)} answering?"
            ) from None
        self._tasks = [
            asyncio.create_task(self.relay.run()),
            asyncio.create_task(self.consumer.run()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.relay.stop()
        self.consumer.stop()
        _done, pending = await asyncio.wait(self._tasks, timeout=START_LIMIT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        await self.consumer.close()
        await self.relay.close()


class Watch:
    """Counts the run's events that settled: applied by the group, or dead letters of it."""

    def __init__(
        self, pool: asyncpg.Pool, catalog: Catalog, pipeline: Pipeline, event_ids: list[uuid.UUID]
    ) -> None:
        self.pool = pool
        self.catalog = catalog
        self.pipeline = pipeline
        self.event_ids = event_ids
        self._schema = database.validate_schema(pipeline.names.schema)

    async def until_settled(self, console: Console, time_limit: float) -> None:
        """Show progress until every event settled; DemoStuck after `time_limit` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_limit
        total = len(self.event_ids)
        columns = (TextColumn("relay → consumer"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("settled", total=total)
            while (done := len(await self._settled())) < total:
                progress.update(task, completed=done)
                if loop.time() >= deadline:
                    raise await self._stuck(time_limit)
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
            progress.update(task, completed=total)

    async def _settled(self) -> set[uuid.UUID]:
        applied = await self.pool.fetch(
            f"SELECT event_id FROM {self._schema}.{database.LEDGER_TABLE} "
            "WHERE consumer_group = $1 AND event_id = ANY($2::uuid[]) "
            "AND processing_result IN ('success', 'skipped')",
            self.pipeline.group,
            self.event_ids,
        )
        dead = await self.catalog.dead_letters_of_events(self.event_ids)
        group = self.pipeline.group
        return {r[0] for r in applied} | {
            uuid.UUID(d.event_id) for d in dead if d.group == group and d.event_id
        }

    async def _stuck(self, time_limit: float) -> DemoStuck:
        settled = await self._settled()
        pending = [i for i in self.event_ids if i not in settled]
        rows = await self.pool.fetch(
            f"SELECT event_id, event_type, published_at IS NOT NULL AS published "
            f"FROM {self._schema}.{database.OUTBOX_TABLE} WHERE event_id = ANY($1::uuid[]) "
            "ORDER BY id",
            pending,
        )
        examples = ", ".join(
            f"{r['event_id']} ({r['event_type'].rsplit('.', 1)[-1]})" for r in rows[:EXAMPLES]
        )
        unpublished = sum(1 for r in rows if not r["published"])
        message = (
            f"only {len(settled)} of {len(self.event_ids)} demo events settled within "
            f"{time_limit:g} s; {len(pending)} still pending, e.g. {examples}. "
            + await self._cause(unpublished, len(pending), time_limit)
        )
        return DemoStuck(
            message,
            settled=len(settled),
            total=len(self.event_ids),
            pending=[str(i) for i in pending],
        )

    async def _cause(self, unpublished: int, pending: int, time_limit: float) -> str:
        names = self.pipeline.names
        if unpublished:
            return (
                f"{unpublished} of them are still in the outbox of schema {names.schema}: is the "
                f"demo's relay stuck, or Redis at {redact(names.redis_url)} unreachable?"
            )
        others = await self._other_consumers(time_limit + START_LIMIT)
        if others:
            held = ", ".join(f"{name} (holding {n})" if n else name for name, n in others)
            return (
                f"Another consumer of group {self.pipeline.group} reads topic "
                f"{self.pipeline.topic} under key prefix {names.key_prefix} and may have taken "
                f"them: {held}. Stop it, or run the demo with a --key-prefix of its own."
            )
        return (
            f"All {pending} were published. Another relay may have drained schema {names.schema} "
            "into another key prefix, or they are still being retried: raise --time-limit to "
            "wait longer."
        )

    async def _other_consumers(self, since: float) -> list[tuple[str, int]]:
        """Members of the demo's group, other than the demo's own consumer, that hold entries
        or read within the last `since` seconds, with how many entries each holds."""
        stream = wire.Keys(self.pipeline.topic, self.pipeline.names.key_prefix).events
        client = await redis_client.open(self.pipeline.names.redis_url, socket_timeout=5.0)
        try:
            members = await client.xinfo_consumers(stream, self.pipeline.group)
        finally:
            await client.aclose()
        own = self.pipeline.settings.consumer
        found = []
        for m in members:
            name = m["name"].decode() if isinstance(m["name"], bytes) else str(m["name"])
            if name != own and (m["pending"] or m["idle"] < since * 1000):
                found.append((name, int(m["pending"])))
        return found
