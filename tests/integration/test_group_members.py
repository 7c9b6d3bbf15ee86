"""Per-member status: each member of a group on a topic's stream, with the host the registry
names, its pending entries, idle time and redeliveries — in the snapshot, over GetStatus and in
`conveyor status`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from admin.catalog import Catalog
from admin.catalog.registry import register
from admin.ops.convert import status_response
from admin.ops.status import ComponentStatus, GroupStatus, OutboxStatus, RedisStatus, StatusChecker
from consumers.catalog import Member
from conveyor import wire
from conveyor.v1 import admin_pb2
from tests.integration.cli_support import (  # noqa: F401 - pytest fixtures
    FakeAdmin,
    fixture_fake,
    fixture_run,
    fixture_served,
    timestamp,
)
from tests.integration.conftest import Case

GROUP, TOPIC = "billing", "orders"


class _Probe:
    def components(
        self, redis: RedisStatus, groups: Sequence[GroupStatus], now: float
    ) -> list[ComponentStatus]:
        return []

    def outboxes(self) -> list[OutboxStatus]:
        return []


def _member(prefix: str, name: str, host: str) -> Member:
    return Member(prefix, GROUP, name, (TOPIC,), "at-least-once", None, host, 1, None)


@pytest.mark.usefixtures("catalog_cleanup")
async def test_each_member_shows_its_host_pending_idle_and_redeliveries(case: Case) -> None:
    # Two members on two hosts share the stream: a-1 took 3 entries and one of them again
    # (a redelivery), b-1 took 1; a member the registry does not know (it stopped) still
    # shows, with no host.
    stream = wire.Keys(TOPIC, case.prefix).events
    await case.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for _ in range(5):
        await case.redis.xadd(stream, {"v": "1"})
    a = await case.redis.xreadgroup(GROUP, "a-1", {stream: ">"}, count=3)
    await case.redis.xreadgroup(GROUP, "b-1", {stream: ">"}, count=1)
    await case.redis.xreadgroup(GROUP, "gone-1", {stream: ">"}, count=1)
    await case.redis.xclaim(stream, GROUP, "a-1", 0, [a[0][1][0][0]])
    pool = await asyncpg.create_pool(case.database_url, min_size=1, max_size=2)
    try:
        await register(pool, _member(case.prefix, "a-1", "host-a"))
        await register(pool, _member(case.prefix, "b-1", "host-b"))
        checker = StatusChecker(
            redis=case.redis, catalog=Catalog(pool, case.prefix), probe=_Probe()
        )
        snapshot = await checker.refresh()
    finally:
        await pool.close()
    (group,) = snapshot.groups
    shown = [(m.name, m.host, m.pending, m.redelivered) for m in group.members]
    assert shown == [("a-1", "host-a", 3, 1), ("b-1", "host-b", 1, 0), ("gone-1", "", 1, 0)]
    assert all(0 <= m.idle < 60 for m in group.members)
    answered = status_response(snapshot).groups[0].members
    assert [(m.name, m.host, m.pending, m.redelivered) for m in answered] == shown


def test_status_prints_a_row_per_member(fake: FakeAdmin, run: Any) -> None:
    member = admin_pb2.GroupMember
    fake.answers["GetStatus"] = admin_pb2.GetStatusResponse(
        overall=admin_pb2.COMPONENT_STATE_SERVING,
        redis=admin_pb2.RedisStatus(up=True),
        groups=[
            admin_pb2.GroupStatus(
                topic="orders",
                group="billing",
                pending=4,
                consumers=2,
                mode="exactly-once",
                members=[
                    member(
                        name="web-7-812",
                        host="web-7",
                        pending=3,
                        idle_seconds=0.4,
                        inactive_seconds=-1,
                        redelivered=1,
                    ),
                    member(
                        name="web-9-90",
                        host="",
                        pending=1,
                        idle_seconds=5400,
                        inactive_seconds=5400,
                        redelivered=0,
                    ),
                ],
            )
        ],
        snapshot_time=timestamp("2026-11-29T05:00:00"),
    )
    shown = run("status")
    assert shown.exit_code == 0, shown.output
    lines = [line.strip() for line in shown.stdout.splitlines()]
    start = lines.index("group members")
    rows = [line.split() for line in lines[start + 2 : start + 4]]
    assert rows[0] == ["orders", "billing", "web-7-812", "web-7", "3", "0.4", "s", "-", "1"]
    assert rows[1] == ["orders", "billing", "web-9-90", "-", "1", "90.0", "min", "90.0", "min", "0"]
