"""`conveyor bench`'s pipeline, CPU-cost and ops-latency scenarios, run at tiny sizes on the real
services: every figure is there, in its unit, with a baseline and a target where it should have
them. Never a timing: the values only have to be positive numbers."""

from __future__ import annotations

import math
import re

from admin.bench import runner
from admin.bench.harness import Bench
from admin.bench.meter import CpuCost
from admin.bench.model import Figure, Sizes

TINY = Sizes(events=300, pipeline_events=500, batch=100, cpu_seconds=0.5, ops_calls=20)


def _sane(f: Figure) -> None:
    assert math.isfinite(f.value) and f.value > 0, f
    if f.baseline is not None:
        assert math.isfinite(f.baseline) and f.baseline > 0, f
        assert f.baseline_name, f
    assert f.as_json()["met"] in (True, False, None)


async def test_pipeline_and_cpu_report_every_figure(database_url: str, redis_url: str) -> None:
    bench = Bench(database_url, redis_url, TINY)
    bench.shared["relay_rate"] = 20_000.0  # as if the relay scenario had run before

    figures, _ = await runner.run(bench, ["pipeline", "cpu"])

    pipeline, *cpu = figures
    assert (pipeline.scenario, pipeline.name, pipeline.unit) == (
        "pipeline",
        "full pipeline",
        "events/s",
    )
    assert pipeline.baseline_name in ("relay alone", "exactly-once per-event consumer alone")
    assert str(pipeline.target) == ">= 0.6x"
    assert "relay alone 20,000/s (this run's scenario)" in pipeline.detail
    assert "consumer alone" in pipeline.detail and "measured here" in pipeline.detail
    assert [(f.scenario, f.name, f.unit, str(f.target)) for f in cpu] == [
        ("cpu", "CPU per 1,000 events at 100 %", "ms CPU / 1,000 events", "None"),
        ("cpu", "CPU per 1,000 events at 50 %", "ms CPU / 1,000 events", "<= 1.3x"),
        ("cpu", "CPU per 1,000 events at 10 %", "ms CPU / 1,000 events", "<= 2x"),
    ]
    assert cpu[0].baseline is None
    assert all(f.baseline == cpu[0].value for f in cpu[1:])
    split = re.compile(r"relay [\d,]+ / consumer [\d,]+ / postgres [\d,]+ / redis [\d,]+ ms")
    assert all(split.search(f.detail) for f in cpu), [f.detail for f in cpu]
    assert all("achieved" in f.detail for f in cpu[1:])
    for f in figures:
        _sane(f)
    cost = bench.shared["cpu_at_max"]
    assert isinstance(cost, CpuCost) and cost.events == TINY.pipeline_events


async def test_ops_reports_loaded_and_idle_latency(database_url: str, redis_url: str) -> None:
    bench = Bench(database_url, redis_url, TINY)
    bench.shared["max_rate"] = 400.0  # as if the pipeline scenario had measured it

    figures, _ = await runner.run(bench, ["ops"])

    targets = ("consumer Health.Check", "consumer AdminService.GetStatus", "relay Health.Check")
    assert [f.name for f in figures] == [f"{t} p99, 50 % load" for t in targets] + [
        f"{t} p99, no load" for t in targets
    ]
    assert all(f.scenario == "ops" and f.unit == "ms" for f in figures)
    assert [str(f.target) for f in figures] == ["<= 1.2x"] * 3 + ["<= 5"] * 3
    assert len({f.baseline for f in figures[:3]}) == 1  # one bare server, one window
    assert all(re.search(r"p50 [\d.]+ ms, bare [\d.]+ ms", f.detail) for f in figures)
    assert "of 200/s offered" in figures[0].detail
    for f in figures:
        _sane(f)
