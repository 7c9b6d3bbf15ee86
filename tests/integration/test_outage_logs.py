"""What running relays and consumers log while PostgreSQL is away (docs/operations.md, "What the
relay logs", "What a consumer logs"): one line naming the masked address when the outage begins,
one every 30 s while it lasts, one when it ends; no tracebacks."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, effect_counts, publish
from tests.integration.proxies import Proxy
from tests.processes import start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow


class Output:
    """What a process prints, read as it comes (a full pipe would stall its event loop)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stdout:
            self._lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self._lines)

    async def shows(self, pattern: str, timeout: float = 30) -> None:
        async def seen() -> bool:
            return re.search(pattern, self.text) is not None

        try:
            await wait_until(seen, timeout=timeout, interval=0.1, what=f"{pattern!r} in the log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.text}") from None


@pytest.fixture
def proxy(case: Case) -> Iterator[Proxy]:
    proxy = Proxy(make_url(case.database_url).port or 5432)
    yield proxy
    proxy.close()


def begin_lines(text: str, port: int) -> list[str]:
    """The outage lines naming PostgreSQL behind `proxy`, its password masked."""
    address = re.escape(f"postgresql://postgres:***@127.0.0.1:{port}/postgres")
    return re.findall(rf"postgres at {address} unreachable \(.*", text)


# The monitor, the NOTIFY listener, the ops plane's registry reads and asyncpg's pool (which logs
# "Failed to restore the pool connection floor" with a traceback) all notice the outage within a
# second; only the outage line may say so.
async def test_a_postgres_outage_is_logged_once_without_tracebacks(
    case: Case, proxy: Proxy
) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{proxy.port}/postgres"
    args = ["relay", "--schema", case.schema, "--allow-unauthenticated"]
    proc = start_conveyor(args, case.env | {"CONVEYOR_DATABASE_URL": url})
    out = Output(proc)
    try:
        await out.shows("relay started")
        proxy.cut()
        await asyncio.sleep(10)  # an outage of 10 s: one line when it begins, per the docs
        proxy.restore()
        await out.shows("postgres at .* answers again after")
    finally:
        stop(proc)
    shown = out.text
    assert "Traceback" not in shown, shown
    assert "secret" not in shown, shown
    assert len(begin_lines(shown, proxy.port)) == 1, shown
    for repeated in ("cannot LISTEN for outbox notifications", "cannot read the consumer registry"):
        count = len(re.findall(repeated, shown))
        assert count <= 1, f"{repeated!r} logged {count} times in a 10 s outage:\n{shown}"


async def test_a_postgres_outage_under_a_consumer_is_logged_once_and_ridden_out(
    case: Case, proxy: Proxy
) -> None:
    await create_effects(case.pg, case.schema)
    url = f"postgresql://postgres:secret@127.0.0.1:{proxy.port}/postgres"
    args = ["consume", "--group", "g", "--router", "tests.integration.effects_router:router"]
    args += ["--ledger-schema", case.schema, "--allow-unauthenticated"]
    env = case.env | {"CONVEYOR_DATABASE_URL": url, "TEST_EFFECTS_SCHEMA": case.schema}
    proc = start_conveyor(args, env)
    out = Output(proc)

    async def applied(n: int) -> bool:
        return len(await effect_counts(case.pg, case.schema, "g")) == n

    try:
        await out.shows("consumer started")
        before = await publish(case.redis, case.prefix, 20)
        await wait_until(lambda: applied(20), what="applied before the outage")
        proxy.cut()
        during = await publish(case.redis, case.prefix, 20)  # waits for PostgreSQL
        await asyncio.sleep(10)
        proxy.restore()
        await wait_until(lambda: applied(40), timeout=60, what="applied after the outage")
        await out.shows("postgres at .* answers again after")
    finally:
        stop(proc)
    shown = out.text
    assert "Traceback" not in shown, shown
    assert "secret" not in shown, shown
    assert len(begin_lines(shown, proxy.port)) == 1, shown
    assert len(re.findall("cannot read the consumer registry", shown)) <= 1, shown
    counts = await effect_counts(case.pg, case.schema, "g")
    assert set(counts) == set(before + during) and set(counts.values()) == {1}
