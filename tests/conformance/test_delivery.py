"""Publish/subscribe conformance, delivery: which member and which group gets which event, and
in which order (tests/conformance/support.py says how the scenarios are built)."""

from __future__ import annotations

from consumers import EventContext
from relay import enqueue
from tests.conformance.support import (
    assert_delivered,
    create_applied,
    members,
    payload,
    produce,
    recording_router,
    settings_for,
    wait_applied,
)
from tests.integration.conftest import Case
from tests.integration.relay_support import running_relay


async def test_members_of_one_group_share_the_events_and_apply_each_once(
    case: Case, mode: str
) -> None:
    """Three members of one group, events committed while they run: each event is applied by
    the group as a whole (once in exactly-once mode), and the members share the work."""
    await create_applied(case.pg, case.schema)
    pairs = [
        (
            recording_router(case.schema, ["orders"], member=name),
            settings_for(case, "shipping", name, mode, batch_size=20),
        )
        for name in ("m1", "m2", "m3")
    ]
    async with running_relay(**case.relay_settings()), members(*pairs):
        ids: list[str] = []
        for wave in range(8):
            ids += await produce(
                case.pg, case.schema, range(wave * 40, wave * 40 + 40), topic="orders"
            )
        counts = await wait_applied(case, "shipping", ids, topic="orders")
    assert_delivered(counts, ids, mode)
    busy = await case.pg.fetchval(
        f"SELECT count(DISTINCT member) FROM {case.schema}.applied "
        "WHERE consumer_group = 'shipping'"
    )
    assert busy >= 2, "the members share the group's events"


async def test_twenty_topics_each_get_exactly_their_events(case: Case) -> None:
    """One consumer of 20 topics; transactions mixing events of several topics: every topic's
    handler applies exactly the events committed on that topic, once."""
    await create_applied(case.pg, case.schema)
    topics = [f"topic{n:02d}" for n in range(20)]
    expected: dict[str, list[str]] = {t: [] for t in topics}
    for tx in range(10):
        async with case.pg.transaction():
            for n, topic in enumerate(topics):
                seq = tx * 100 + n
                event_id = await enqueue(
                    case.pg,
                    payload(seq),
                    aggregate_type="user",
                    aggregate_id=f"user-{seq}",
                    topic=topic,
                    schema=case.schema,
                )
                expected[topic].append(str(event_id))
    router = recording_router(case.schema, topics)
    settings = settings_for(case, "indexer", "m1", "exactly-once", partitions=1)
    async with running_relay(**case.relay_settings()), members((router, settings)):
        for topic in topics:
            await wait_applied(case, "indexer", expected[topic], topic=topic)
    rows = await case.pg.fetch(
        f"SELECT topic, event_id::text FROM {case.schema}.applied ORDER BY topic, event_id"
    )
    by_topic: dict[str, list[str]] = {}
    for row in rows:
        by_topic.setdefault(row["topic"], []).append(row["event_id"])
    assert by_topic == {t: sorted(ids) for t, ids in expected.items()}


async def test_a_consumer_of_one_topic_never_sees_another_topics_events(case: Case) -> None:
    """One router with handlers for topics alpha and beta; group `a` consumes alpha, group `b`
    beta. Events of both committed in the same transactions: each group sees only its topic's."""
    await create_applied(case.pg, case.schema)
    seen: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}

    def watch(seq: int, ctx: EventContext) -> None:
        seen[ctx.group].append((ctx.topic, ctx.event_id))

    router = recording_router(case.schema, ["alpha", "beta"], after=watch)
    alpha: list[str] = []
    beta: list[str] = []
    for tx in range(10):
        async with case.pg.transaction():
            alpha += await produce(case.pg, case.schema, range(tx * 10, tx * 10 + 5), topic="alpha")
            beta += await produce(
                case.pg, case.schema, range(tx * 10 + 5, tx * 10 + 10), topic="beta"
            )
    pairs = [
        (router, settings_for(case, "a", "m1", "exactly-once", topics=("alpha",))),
        (router, settings_for(case, "b", "m1", "exactly-once", topics=("beta",))),
    ]
    async with running_relay(**case.relay_settings()), members(*pairs):
        assert_delivered(await wait_applied(case, "a", alpha, topic="alpha"), alpha, "exactly-once")
        assert_delivered(await wait_applied(case, "b", beta, topic="beta"), beta, "exactly-once")
    assert sorted(seen["a"]) == sorted(("alpha", i) for i in alpha)
    assert sorted(seen["b"]) == sorted(("beta", i) for i in beta)


async def test_two_groups_each_apply_every_event(case: Case, mode: str) -> None:
    """Groups `billing` and `mailer` on one topic, events committed while both run: each group
    applies every event (once in exactly-once mode), whatever the other does."""
    await create_applied(case.pg, case.schema)
    router = recording_router(case.schema, ["orders"])
    pairs = [(router, settings_for(case, g, "m1", mode)) for g in ("billing", "mailer")]
    async with running_relay(**case.relay_settings()), members(*pairs):
        ids: list[str] = []
        for wave in range(6):
            ids += await produce(
                case.pg, case.schema, range(wave * 50, wave * 50 + 50), topic="orders"
            )
        for group in ("billing", "mailer"):
            assert_delivered(await wait_applied(case, group, ids, topic="orders"), ids, mode)


async def test_one_member_applies_each_aggregates_events_in_commit_order(
    case: Case, mode: str
) -> None:
    """architecture.md, Ordering: within one consumer the events of one aggregate apply in
    stream order, which is the order one producer committed them in. Ten aggregates, 500
    events committed one transaction after another while the consumer runs."""
    await create_applied(case.pg, case.schema)
    calls: dict[str, list[int]] = {}

    def note(seq: int, ctx: EventContext) -> None:
        calls.setdefault(ctx.aggregate_id, []).append(seq)

    router = recording_router(case.schema, ["orders"], after=note)
    async with (
        running_relay(**case.relay_settings()),
        members((router, settings_for(case, "projector", "m1", mode))),
    ):
        ids: list[str] = []
        for wave in range(10):
            seqs = range(wave * 50, wave * 50 + 50)
            ids += await produce(case.pg, case.schema, seqs, topic="orders", aggregates=10)
        counts = await wait_applied(case, "projector", ids, topic="orders")
    assert_delivered(counts, ids, mode)
    firsts = {aggregate: list(dict.fromkeys(seqs)) for aggregate, seqs in calls.items()}
    assert firsts == {f"user-{a}": list(range(a, 500, 10)) for a in range(10)}
