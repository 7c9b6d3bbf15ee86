"""The producer API: an event is in the outbox if and only if its transaction committed."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from conveyor.database import notify_channel
from conveyor.identity.v1 import events_pb2
from conveyor.v1 import event_pb2
from relay import EventTooLarge, NewEvent, NotAMessage, NotInTransaction, enqueue, enqueue_many


def registered(n: int = 0) -> events_pb2.UserRegistered:
    return events_pb2.UserRegistered(user_id=f"u{n}", email=f"u{n}@example.com")


async def outbox_ids(pg: asyncpg.Connection, schema: str) -> list[uuid.UUID]:
    return [r[0] for r in await pg.fetch(f"SELECT event_id FROM {schema}.outbox ORDER BY id")]


async def make_business_table(pg: asyncpg.Connection, schema: str) -> None:
    await pg.execute(f"CREATE TABLE {schema}.users (id text PRIMARY KEY)")


async def test_committed_transaction_writes_business_row_and_event(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    s = migrated_schema
    await make_business_table(pg, s)
    async with pg.transaction():
        await pg.execute(f"INSERT INTO {s}.users VALUES ('u1')")
        event_id = await enqueue(
            pg, registered(1), aggregate_type="user", aggregate_id="u1", schema=s
        )
    assert await outbox_ids(pg, s) == [event_id]
    row = await pg.fetchrow(f"SELECT * FROM {s}.outbox")
    event = event_pb2.Event.FromString(row["payload"])
    assert event.id == str(event_id)
    assert event.type == "conveyor.identity.v1.UserRegistered"
    assert (event.aggregate_type, event.aggregate_id) == ("user", "u1")
    assert row["topic"] == "user"
    payload = events_pb2.UserRegistered()
    assert event.data.Unpack(payload)
    assert payload.email == "u1@example.com"


async def test_rolled_back_transaction_leaves_no_event(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    s = migrated_schema
    await make_business_table(pg, s)
    with pytest.raises(RuntimeError, match="business failure"):
        async with pg.transaction():
            await pg.execute(f"INSERT INTO {s}.users VALUES ('u1')")
            await enqueue(pg, registered(), aggregate_type="user", aggregate_id="u1", schema=s)
            raise RuntimeError("business failure")
    assert await outbox_ids(pg, s) == []
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.users") == 0


async def test_enqueue_outside_a_transaction_raises_before_writing(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    with pytest.raises(NotInTransaction, match=r"conn.transaction\(\)"):
        await enqueue(
            pg, registered(), aggregate_type="user", aggregate_id="u1", schema=migrated_schema
        )
    assert await outbox_ids(pg, migrated_schema) == []


async def test_oversized_event_fails_the_business_transaction_before_commit(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    s = migrated_schema
    await make_business_table(pg, s)
    big = events_pb2.UserRegistered(user_id="u1", display_name="x" * 2000)
    with pytest.raises(EventTooLarge, match="over the 1000-byte cap") as info:
        async with pg.transaction():
            await pg.execute(f"INSERT INTO {s}.users VALUES ('u1')")
            await enqueue(
                pg, big, aggregate_type="user", aggregate_id="u1", schema=s, max_event_bytes=1000
            )
    assert info.value.size > 1000
    assert await outbox_ids(pg, s) == []
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.users") == 0


async def test_default_cap_is_one_mebibyte(pg: asyncpg.Connection, migrated_schema: str) -> None:
    big = events_pb2.UserRegistered(user_id="u1", display_name="x" * (1024 * 1024))
    with pytest.raises(EventTooLarge, match="1048576-byte cap"):
        async with pg.transaction():
            await enqueue(pg, big, aggregate_type="user", aggregate_id="u1", schema=migrated_schema)


@pytest.mark.parametrize("value", [{"user_id": "u1"}, b"bytes", "text", None])
async def test_non_message_payload_is_a_type_error_naming_it(
    pg: asyncpg.Connection, migrated_schema: str, value: object
) -> None:
    with pytest.raises(TypeError, match=f"got builtins.{type(value).__name__}"):
        async with pg.transaction():
            await enqueue(
                pg,
                value,
                aggregate_type="user",
                aggregate_id="u1",  # type: ignore[arg-type]
                schema=migrated_schema,
            )
    assert issubclass(NotAMessage, TypeError)
    assert await outbox_ids(pg, migrated_schema) == []


async def test_duplicate_event_id_fails_the_transaction(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    s, event_id = migrated_schema, uuid.uuid4()
    async with pg.transaction():
        await enqueue(
            pg, registered(), aggregate_type="user", aggregate_id="u1", schema=s, event_id=event_id
        )
    with pytest.raises(asyncpg.UniqueViolationError):
        async with pg.transaction():
            await enqueue(
                pg,
                registered(),
                aggregate_type="user",
                aggregate_id="u1",
                schema=s,
                event_id=event_id,
            )
    assert await outbox_ids(pg, s) == [event_id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "Bad Topic"}, "invalid topic"),
        ({"aggregate_type": ""}, "aggregate_type must be a non-empty string"),
        ({"aggregate_id": ""}, "aggregate_id must be a non-empty string"),
        ({"schema": "no-such"}, "invalid schema name"),
    ],
)
async def test_bad_arguments_are_refused_before_writing(
    pg: asyncpg.Connection, migrated_schema: str, kwargs: dict[str, str], message: str
) -> None:
    args = {"aggregate_type": "user", "aggregate_id": "u1", "schema": migrated_schema} | kwargs
    with pytest.raises(ValueError, match=message):
        async with pg.transaction():
            await enqueue(pg, registered(), **args)  # type: ignore[arg-type]
    assert await outbox_ids(pg, migrated_schema) == []


async def test_enqueue_many_writes_all_in_order_with_topics_and_headers(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    s = migrated_schema
    batch = [
        NewEvent(
            registered(i), "user", f"u{i}", topic="identity", headers={"correlation_id": f"c{i}"}
        )
        for i in range(50)
    ]
    async with pg.transaction():
        ids = await enqueue_many(pg, batch, schema=s)
    assert await outbox_ids(pg, s) == ids
    rows = await pg.fetch(f"SELECT topic, aggregate_id, payload FROM {s}.outbox ORDER BY id")
    assert [r["topic"] for r in rows] == ["identity"] * 50
    assert [r["aggregate_id"] for r in rows] == [f"u{i}" for i in range(50)]
    assert event_pb2.Event.FromString(rows[7]["payload"]).headers["correlation_id"] == "c7"
    assert ids == sorted(ids), "event ids are time-ordered (UUIDv7)"


async def test_insert_notifies_the_schema_channel(
    pg: asyncpg.Connection, database_url: str, migrated_schema: str
) -> None:
    listener = await asyncpg.connect(database_url)
    got: list[str] = []
    await listener.add_listener(notify_channel(migrated_schema), lambda *a: got.append(a[2]))
    try:
        async with pg.transaction():
            await enqueue(
                pg, registered(), aggregate_type="user", aggregate_id="u1", schema=migrated_schema
            )
        for _ in range(100):
            if got:
                break
            await listener.execute("SELECT 1")
        assert got == [notify_channel(migrated_schema)]
    finally:
        await listener.close()


async def test_a_row_written_around_enqueue_with_a_bad_topic_is_refused(
    pg: asyncpg.Connection, migrated_schema: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="outbox_topic_check"):
        await pg.execute(
            f"INSERT INTO {migrated_schema}.outbox (event_id, topic, event_type, aggregate_type, "
            "aggregate_id, payload) VALUES (gen_random_uuid(), 'Bad {Topic}', 't', 'a', '1', '')"
        )
