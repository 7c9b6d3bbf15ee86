"""The torture suite: real producers, relays and consumers under faults, then a strict check.

How a scenario is written (tests/torture/test_process_faults.py is the first one):

    async def test_something(deployment: Deployment, seed: int, log_dir: Path,
                             request: pytest.FixtureRequest) -> None:
        groups = DEFAULT_GROUPS                                   # deployment.py
        workload = Workload(WorkloadConfig(deployment.database_url, deployment.schema,
                                           seed=seed, rate=80))    # workload.py
        async with Pipeline(deployment, log_dir, relays=2, groups=groups) as pipeline:
            await pipeline.start()                                # pipeline.py
            workload.start()
            ...faults (chaos.py: make_schedule / run_schedule, or your own)...
            journal = await workload.stop()
            await settle(deployment, groups, timeout=60, diagnose=pipeline.tails)
            report = await check(deployment, groups, journal, seed=seed)   # checker.py
        attach(request, "torture report", report.table())
        report.assert_clean()

Modules: `router` (the consumers' handlers, env-configured), `workload` (producers, Journal),
`pipeline` (processes), `chaos` (seeded fault schedules), `checker` (settle, check), `facts`
(reading back, traces), `report` (Report), `deployment` (Deployment, Group, prepare).

Fixtures here:
- `seed`: TORTURE_SEED from the environment, else random; printed at the start, recorded in
  `user_properties` and, when the test fails, shown as a report section "torture seed" with
  the command that replays it: `TORTURE_SEED=<seed> .venv/bin/pytest <test id>`.
- `deployment`: a fresh migrated schema (with `orders` and `effects`) and key prefix on the
  shared servers; afterwards the schema is dropped and every Redis key and catalog row of the
  prefix deleted (tests/conftest.py's `schema` and `key_prefix` fixtures). A scenario on
  throwaway servers (tests/servers.py) builds its own `Deployment` and calls
  `await prepare(deployment)` instead.
- `log_dir`: where the Pipeline writes each process's log (kept by pytest's tmp_path).

`attach(request, title, text)` prints `text` (seen with -s) and adds it to the test's report
sections (shown for failures, and for passes with -rP).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.torture.deployment import Deployment, create_tables

SEED_ENV = "TORTURE_SEED"
_SECTIONS = pytest.StashKey[list[tuple[str, str]]]()
_SEED = pytest.StashKey[int]()


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The scenario's seed: TORTURE_SEED, else a random one; shown when the test fails."""
    value = int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else random.randrange(1, 2**31)
    request.node.stash[_SEED] = value
    request.node.user_properties.append(("torture_seed", value))
    print(f"torture seed {value} (replay with {SEED_ENV}={value})")
    return value


def attach(request: pytest.FixtureRequest, title: str, text: str) -> None:
    """Print `text` and add it to the test's report as a section named `title`."""
    print(f"{title}:\n{text}")
    request.node.stash.setdefault(_SECTIONS, []).append((title, text))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        for title, text in item.stash.get(_SECTIONS, []):
            report.sections.append((title, text))
    if report.failed and _SEED in item.stash:
        seed = item.stash[_SEED]
        report.sections.append(
            (
                "torture seed",
                f"{seed}: replay with {SEED_ENV}={seed} .venv/bin/pytest '{item.nodeid}'",
            )
        )
    return report


@pytest.fixture
def deployment(
    database_url: str, redis_url: str, migrated_schema: str, key_prefix: str
) -> Deployment:
    """A migrated schema with `orders` and `effects`, and a key prefix, cleaned up after."""
    asyncio.run(create_tables(database_url, migrated_schema))
    return Deployment(database_url, redis_url, migrated_schema, key_prefix)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
