"""`conveyor consume --start`: reading the start point people type, and creating the group on
every stream of the consumer's topics (each partition's too) at it before the consumer runs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from admin.cli.durations import parse_since
from consumers.settings import ConsumerSettings

if TYPE_CHECKING:
    pass

START_HELP = (
    "Where the group starts on each topic stream when this member creates it there: `earliest` "
    "(every event the stream still holds; what the housekeeper has trimmed is gone), `latest` "
    "(only events appended after the creation) or a time, ISO 8601 (e.g. 2026-11-29T05:00:00Z) "
    "or how long ago (e.g. 2h), from the first event appended then. A group that exists keeps "
    "its place (logged at start); the group's retry stream always starts at its beginning."
)


def parse_start(text: str, now: datetime | None = None) -> str:
    """The start point `text` as ConsumerSettings.start takes it: `earliest`, `latest` or the
    stream entry id `<ms>-0` of a time; ValueError naming --start."""
    value = text.strip().lower()
    if value in ("earliest", "latest"):
        return value
    try:
        moment = parse_since(text, now)
    except ValueError:
        raise ValueError(
            f"invalid --start {text.strip()[:40]!r}: use earliest, latest, an ISO 8601 time "
            "(e.g. 2026-11-29T05:00:00Z) or how long ago (e.g. 2h)"
        ) from None
    ms = int(moment.timestamp() * 1000)
    if ms < 0:
        raise ValueError(f"invalid --start {text.strip()[:40]!r}: it is before 1970")
    return f"{ms}-0"


async def create_groups(settings: ConsumerSettings, *, named: str) -> None:
    """Create the group on every stream of the settings' topics (one per partition of a
    partitioned topic, as the catalog's topic layouts say) at `settings.start`, logging where
    each stands; `named` is --start as given."""
    import asyncpg

    from admin.catalog.layouts import layouts
    from consumers.start_points import create_groups as create
    from consumers.streams import TopicStreams
    from conveyor import database, redis_client, wire

    s = settings
    conn = await asyncpg.connect(
        s.database_url,
        timeout=s.dependency_timeout,
        server_settings=database.server_settings(s.database_url, "consume", s.group),
    )
    try:
        counts = {t: lay.partitions for t, lay in (await layouts(conn, s.key_prefix)).items()}
    finally:
        await conn.close()
    client = redis_client.connect(s.redis_url, timeout=s.dependency_timeout)

    try:
        streams = [
            TopicStreams(client, keys, s.group, s.consumer, timeout=s.dependency_timeout)
            for topic in s.topics
            for keys in wire.topic_keys(topic, s.key_prefix, counts.get(topic))
        ]
        await create(streams, s.start_id, named=named)
    finally:
        await client.aclose()
