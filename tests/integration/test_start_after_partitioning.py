"""`--start` after the topic's layout changed: the group exists on the topic (on its old stream),
so the start point must not apply to the new partition streams, where the relays restarted first
(as the procedure says) already published the events that waited in the outbox."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from admin.cli.start_point import create_groups
from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.partition_support import TOPIC, partition, publish
from tests.integration.test_start_points import delivered, settings

pytestmark = pytest.mark.usefixtures("catalog_cleanup")


async def test_start_latest_does_not_skip_what_the_relays_published_after_a_repartition(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    plain = wire.Keys(TOPIC, case.prefix)
    group = dataclasses.replace(settings(case, "latest"), topics=(TOPIC,))
    await create_groups(group, named="latest")  # the group's first deployment: --start latest
    assert await delivered(case, plain.events) == 0
    # Drained, relays stopped, the topic split in 4; the relays start again first and publish
    # the events that waited in the outbox by the new layout ...
    layout = await partition(case.pg, case.prefix)
    sent = await publish(case.redis, case.prefix, 12, aggregates=12, layout=layout)
    # ... then the consumers, whose environment still says CONVEYOR_START=latest.
    with caplog.at_level(logging.INFO, logger="consumers.start_points"):
        await create_groups(group, named="latest")
    got = 0
    for keys in wire.topic_keys(TOPIC, case.prefix, layout.partitions):
        got += await delivered(case, keys.events)
    assert got == len(sent), "events published after the change were skipped by --start latest"
    lines = [r.getMessage() for r in caplog.records if "group created" in r.getMessage()]
    assert len(lines) == layout.partitions
    assert all("start=latest not applied" in line and "(id 0)" in line for line in lines), lines
