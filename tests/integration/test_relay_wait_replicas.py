"""`--wait-replicas` against a Redis with no replica (the shared one): the relay warns at start,
every batch fails its WAIT and stays in the outbox (publishing stalls visibly, nothing is marked
published that no replica has), `batches_unreplicated` counts them; with 0 it publishes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from relay import Relay, RelaySettings
from relay.metrics import RelayMetrics
from tests.integration.conftest import Case
from tests.integration.relay_support import fill, running_relay, unpublished
from tests.processes import wait_until


def _total(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    return sum(
        getattr(point, "value", 0)
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    )


async def test_no_replica_stalls_publishing_and_loses_nothing(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await fill(case.pg, case.schema, 30)
    reader = InMemoryMetricReader()
    metrics = RelayMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    settings = RelaySettings(
        **case.relay_settings(wait_replicas=1, wait_timeout=0.05, backoff_max=0.2)
    )
    caplog.set_level(logging.WARNING)
    relay = Relay(settings, metrics)
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:

        async def counted() -> bool:
            return _total(reader, "batches_unreplicated") >= 3

        await wait_until(counted, timeout=60, what="three batches failing their WAIT")
        assert await unpublished(case.pg, case.schema) == len(ids), "no row marked published"
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
        await relay.close()
    said = caplog.text
    assert "has 0 connected replica(s), fewer than --wait-replicas 1" in said
    assert "NotReplicated: only 0 of the 1 replica(s)" in said

    async with running_relay(**case.relay_settings()):
        await wait_until(
            lambda: _none_left(case), timeout=60, what="published without --wait-replicas"
        )


async def _none_left(case: Case) -> bool:
    return await unpublished(case.pg, case.schema) == 0


def test_wait_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="wait_replicas must be 0-100, got -1"):
        RelaySettings(wait_replicas=-1)
    with pytest.raises(ValueError, match=r"wait_timeout must be 0\.001-60 seconds, got 0"):
        RelaySettings(wait_timeout=0)
