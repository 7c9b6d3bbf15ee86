"""benchmarks/scaling.py, the command docs/scaling.md documents, at the smallest sizes: it runs
every scenario on the real servers (shards also on a throwaway one-master Redis Cluster), prints
each figure with its ratio to one process and to the yardstick, and leaves no scratch schema, key
or catalog row behind. No figure's value is judged here."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scaling.py"

TINY = [
    "--rounds",
    "1",
    "--events",
    "1500",
    "--batch",
    "200",
    "--members",
    "1,2",
    "--io-events",
    "60",
    "--io-batch",
    "10",
    "--io-lanes",
    "4",
    "--relays",
    "1,2",
    "--partitions",
    "2",
    "--masters",
    "1",
    "--shard-events",
    "400",
    "--timeout",
    "60",
]

_ROW = re.compile(
    r"^\| (\d+) \|(?: (\d+) \|)?(?: (\d+) \|)? ([\d,]+) \| ([\d,/ ]+) \| ([\d.]+)x \| ([\d.]+)x \|"
)
"""members or relays | lanes | batch (io) | events/s | rounds | vs 1 process | vs yardstick"""


def run(database_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python benchmarks/scaling.py ARGS`, finished; its pid is the result's `pid` attribute
    (the scratch schemas and key prefixes are named after it)."""
    env = {**os.environ, "CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_REDIS_URL": redis_url}
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        out, err = proc.communicate(timeout=280)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid  # type: ignore[attr-defined]
    return done


@pytest.mark.slow
async def test_the_script_prints_every_figure_with_its_ratios(
    database_url: str, redis_url: str, redis_client: object
) -> None:
    done = run(database_url, redis_url, *TINY)
    out, pid = done.stdout, done.pid  # type: ignore[attr-defined]
    assert done.returncode == 0, (out + done.stderr)[-3000:]
    tables = out.split("\n\n")
    rows = {
        title: [m for line in body.splitlines() if (m := _ROW.match(line))]
        for title, body in itertools.pairwise(tables)
    }
    consumers = next(v for k, v in rows.items() if k.startswith("consumers, per-event"))
    waiting = next(v for k, v in rows.items() if k.startswith("consumers, handler waiting 5 ms"))
    relays = next(v for k, v in rows.items() if k.startswith("relays on one outbox"))
    shards = next(
        body.splitlines()[2:]
        for title, body in itertools.pairwise(tables)
        if title.startswith("one relay, one consumer member")
    )
    assert [(m[1], m[2]) for m in consumers] == [("1", "2"), ("2", "2")]
    # the lanes row gets ~25 events per lane per batch
    assert [(m[1], m[2], m[3]) for m in waiting] == [
        ("1", "2", "10"),
        ("2", "2", "10"),
        ("1", "4", "100"),
    ]
    assert [m[1] for m in relays] == ["1", "2"]
    for m in [*consumers, *waiting, *relays]:
        assert float(m[4].replace(",", "")) > 0
        assert float(m[6]) > 0 and float(m[7]) > 0  # ratios to 1 process and to the yardstick
    assert consumers[0][6] == "1.00" and relays[0][6] == "1.00"
    # Redis | partitions | then rate, ratio to one stream, ratio to the yardstick, for the relay
    # and for the consumer.
    shard_rows = [line.strip("| ").split(" | ") for line in shards]
    assert [r[:2] for r in shard_rows] == [
        ["server", "1"],
        ["server", "2"],
        ["cluster, 1 master", "2"],
    ]
    for r in shard_rows:
        for rate, to_one, to_yardstick in (r[2:5], r[5:8]):
            assert float(rate.replace(",", "")) > 0
            assert to_one.endswith("x") and to_yardstick.endswith("x")
        assert r[3] == r[6] == "1.00x" or r[1] != "1"
    yard = r"yardstick \(ideal_pipeline\.py [^)]*\), medians of 1: relay [\d,]+/s, per-event"
    assert re.search(yard, out), out
    assert "WARNING" not in out, out  # every run applied (or published) every event
    conn = await asyncpg.connect(database_url)
    try:
        left = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"bench\\_{pid}\\_%"
        )
        for table in ("consumers", "relays"):
            rows = await conn.fetchval(
                f"SELECT count(*) FROM conveyor.{table} WHERE key_prefix LIKE $1",
                f"bench{pid}\\_%",
            )
            assert rows == 0, f"conveyor.{table} keeps {rows} rows of the run"
    finally:
        await conn.close()
    assert left == []
    keys = redis_client.scan_iter(match=f"bench{pid}_*")  # type: ignore[attr-defined]
    assert not [k async for k in keys]


def test_an_unknown_scenario_exits_2_naming_it(database_url: str, redis_url: str) -> None:
    done = run(database_url, redis_url, "--only", "consumers,warp")
    assert done.returncode == 2
    assert "no scenario warp" in done.stderr
    assert done.stdout == ""
