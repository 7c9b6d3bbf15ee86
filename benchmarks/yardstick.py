"""The yardstick both throughput benchmarks compare with (../shared/bench/ideal_pipeline.py), and
the servers they run on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from conveyor import database, wire

ROOT = Path(__file__).resolve().parents[1]
YARDSTICK = Path(
    os.environ.get("CONVEYOR_YARDSTICK", ROOT.parent / "shared/bench/ideal_pipeline.py")
)
DB = os.environ.get("CONVEYOR_DATABASE_URL", database.DEFAULT_DATABASE_URL)
REDIS = os.environ.get("CONVEYOR_REDIS_URL", wire.DEFAULT_REDIS_URL)


def require() -> None:
    """Exit saying where the yardstick was looked for when it is not there."""
    if not YARDSTICK.exists():
        sys.exit(f"yardstick not found at {YARDSTICK}; set CONVEYOR_YARDSTICK")


def events_per_second(args: Sequence[str], figure: str) -> float:
    """Run the yardstick with `args` on DB and REDIS, print its line `figure` (a pattern such as
    `relay_eps\\[update\\]`) and return the events per second that line reports."""
    out = subprocess.run(
        [sys.executable, str(YARDSTICK), *args],
        env={**os.environ, "PG_DSN": DB, "REDIS_URL": REDIS},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(rf"^{figure} (\d+).*$", out, re.MULTILINE)
    assert m, out
    print(f"yardstick {m[0]}")
    return float(m[1])
