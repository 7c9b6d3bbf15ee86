"""The latency scenario of `conveyor bench` at tiny sizes: the figures it reports, not their
values (the machine is shared; no timing is asserted)."""

from __future__ import annotations

import math

from admin.bench import latency
from admin.bench.harness import Bench
from admin.bench.model import Sizes, Target
from relay.settings import RelaySettings


async def test_reports_p50_p95_p99_with_notify_on_and_off(
    database_url: str, redis_url: str
) -> None:
    sizes = Sizes(latency_rate=40, latency_seconds=1.5)
    figures = await latency.run(Bench(database_url, redis_url, sizes))

    poll_ms = RelaySettings().poll_interval * 1000
    assert [(f.scenario, f.name, f.unit, f.target) for f in figures] == [
        ("latency", "p50, NOTIFY on", "ms", Target("value<=", 3)),
        ("latency", "p95, NOTIFY on", "ms", None),
        ("latency", "p99, NOTIFY on", "ms", Target("value<=", 15)),
        ("latency", "p50, NOTIFY off", "ms", None),
        ("latency", "p95, NOTIFY off", "ms", None),
        ("latency", "p99, NOTIFY off", "ms", Target("value<=", poll_ms + 20)),
    ]
    for f in figures:
        # Every event committed after the warm-up second was handled and measured.
        assert not math.isnan(f.value), f
        assert "warm-up" in f.detail and "not handled" not in f.detail, f.detail
        assert f.baseline is None and (f.met is None) == (f.target is None)
    on, off = figures[:3], figures[3:]
    assert on[0].value <= on[1].value <= on[2].value
    assert off[0].value <= off[1].value <= off[2].value
    assert "--no-listen" in off[0].detail and "--no-listen" not in on[0].detail


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert latency.percentile(values, 50) == 50.0
    assert latency.percentile(values, 99) == 99.0
    assert latency.percentile([7.0], 99) == 7.0
    assert math.isnan(latency.percentile([], 50))


def test_join_leaves_out_the_warm_up_and_unknown_events() -> None:
    commits = {"a": 1_000_000, "b": 5_000_000, "c": 6_000_000}
    handled = [("a", 3_000_000), ("b", 7_500_000), ("c", 7_000_000), ("x", 1)]
    assert latency.join(commits, handled, since_ns=2_000_000) == [1.0, 2.5]
