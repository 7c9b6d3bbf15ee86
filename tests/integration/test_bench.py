"""`conveyor bench` on the real servers with tiny sizes: every scenario reports its figures in
the documented JSON shape, leaves nothing behind, and bad flags get exit 2 with a message.
No figure's value is judged here: timings are the benchmark's to print, not a test's to assert."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import asyncpg
import pytest

from admin.bench import runner
from admin.bench.harness import PYTHON_CONVEYOR

TINY = [
    "--events",
    "400",
    "--pipeline-events",
    "600",
    "--batch",
    "100",
    "--latency-rate",
    "200",
    "--latency-seconds",
    "1.5",
    "--cpu-seconds",
    "1",
    "--ops-calls",
    "20",
    "--backlog-small",
    "100",
    "--backlog-large",
    "300",
    "--notify-seconds",
    "0.3",
    "--notify-connections",
    "1,4",
]

LANDED = tuple(runner.SCENARIOS)

YARDSTICK_SHA256 = "ba3cfe57c09b7ce111c7863bb317d304d09200f13aa83945e3bc66820e909625"
"""ideal_pipeline.py as published beside the brief: a ratio is only honest against it."""


def bench(database_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`conveyor bench ARGS`, finished; its pid is the completed process's `pid` attribute."""
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
    }
    with subprocess.Popen(
        [*PYTHON_CONVEYOR, "bench", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        out, err = proc.communicate(timeout=600)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid  # type: ignore[attr-defined]
    return done


async def leftovers(database_url: str, pid: int) -> list[str]:
    """Scratch schemas the bench process `pid` left (they are named after it)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"bench\\_{pid}\\_%"
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def test_every_scenario_reports_its_figures_as_json(
    database_url: str, redis_url: str, redis_client: object
) -> None:
    done = bench(database_url, redis_url, "--json", "--only", ",".join(LANDED), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["version"] == 1
    assert doc["sizes"]["events"] == 400
    assert doc["sizes"]["notify_connections"] == [1, 4]
    assert {"python", "cpus", "postgresql", "redis"} <= set(doc["machine"])
    figures = doc["figures"]
    assert {f["scenario"] for f in figures} == set(LANDED)
    for f in figures:
        assert set(f) >= {
            "scenario",
            "name",
            "value",
            "unit",
            "baseline",
            "baseline_name",
            "ratio",
            "target",
            "met",
            "detail",
        }, f
        assert isinstance(f["value"], float) and f["value"] >= 0, f
        if f["baseline"] is not None:
            assert f["baseline_name"], f
            assert f["ratio"] == pytest.approx(f["value"] / f["baseline"]), f
        if f["target"] is not None:
            assert f["met"] in (True, False) or f["ratio"] is None, f
    assert doc["missed"] == sum(1 for f in figures if f["met"] is False)
    # Every target the issue sets has a figure that can be judged against it.
    judged = {(f["scenario"], f["target"]) for f in figures if f["target"]}
    assert len(judged) >= 10, judged
    # Progress goes to stderr, never into the JSON on stdout.
    assert "relay" in done.stderr
    pid = done.pid  # type: ignore[attr-defined]
    assert await leftovers(database_url, pid) == []
    keys = redis_client.scan_iter(match=f"bench{pid}_*")  # type: ignore[attr-defined]
    assert not [k async for k in keys]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "relay,warp"], "unknown scenario warp"),
        (["--only", "relay", "--skip", "relay"], "leave no scenario"),
        (["--events", "0"], "events must be >= 1"),
        (["--backlog-small", "500", "--backlog-large", "100"], "small <= large"),
        (["--notify-connections", "4,x"], "invalid size"),
    ],
)
def test_bad_flags_exit_2_saying_what_is_wrong(
    database_url: str, redis_url: str, args: list[str], message: str
) -> None:
    done = bench(database_url, redis_url, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stdout == ""


def test_unreachable_postgresql_exits_1_naming_it(redis_url: str) -> None:
    done = bench("postgresql://postgres@127.0.0.1:1/postgres", redis_url, "--only", "relay")
    assert done.returncode == 1, done.stderr
    assert "bench needs PostgreSQL (postgresql://postgres@127.0.0.1:1/postgres)" in done.stderr


def test_the_bundled_yardstick_is_the_published_one() -> None:
    path = Path(runner.__file__).with_name("ideal_pipeline.py")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == YARDSTICK_SHA256
