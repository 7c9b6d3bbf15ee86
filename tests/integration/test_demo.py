"""`conveyor demo` on the local services: it keeps to names of its own beside a user's relay and
consumer, ends a wait that cannot finish with what is missing, and prints commands that run."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from admin import migrations
from admin.catalog import Catalog
from admin.cli import demo
from conveyor import wire
from conveyor.identity.v1 import events_pb2
from relay import enqueue
from tests.integration.consumer_support import create_effects
from tests.integration.test_ops_plane import port_of
from tests.processes import CONVEYOR, run_conveyor, start_conveyor, stop, wait_until
from tests.servers import free_port

# The demo's names are fixed (schema conveyor_demo, key prefix conveyor-demo): one worker runs
# every test that uses them (`.ci/test` runs two).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo-names")]

EVENTS = 40


@dataclass(frozen=True)
class DemoRun:
    """Where a test runs the demo: a schema and key prefix of its own, so tests can run at once."""

    database_url: str
    redis_url: str
    schema: str
    prefix: str

    @property
    def args(self) -> list[str]:
        return ["demo", "--events", str(EVENTS), "--schema", self.schema]

    @property
    def env(self) -> dict[str, str]:
        return {
            "CONVEYOR_DATABASE_URL": self.database_url,
            "CONVEYOR_REDIS_URL": self.redis_url,
            "CONVEYOR_DEMO_KEY_PREFIX": self.prefix,
            "COLUMNS": "80",
        }


@pytest.fixture
def demo_run(
    database_url: str, redis_url: str, schema: str, key_prefix: str, catalog_cleanup: None
) -> DemoRun:
    return DemoRun(database_url, redis_url, schema, key_prefix)


def expected_dead_letters() -> Counter[str]:
    """Reasons of the dead letters a run of EVENTS events makes, from the demo's own data."""
    events = demo.demo_events("run", EVENTS)
    broken = sum(
        1
        for e in events
        if isinstance(e.message, events_pb2.UserRegistered) and "@" not in e.message.email
    )
    return Counter(rejected=broken, max_attempts=len(demo.unreachable_users("run", EVENTS)))


async def demo_event_ids(pg: asyncpg.Connection, schema: str) -> list[uuid.UUID]:
    return [r[0] for r in await pg.fetch(f"SELECT event_id FROM {schema}.outbox")]


async def demo_dead_letters(run: DemoRun, pg: asyncpg.Connection) -> dict[str, str]:
    """The run's dead letters: entry id -> reason."""
    pool = await asyncpg.create_pool(run.database_url, min_size=1, max_size=1)
    try:
        ids = await demo_event_ids(pg, run.schema)
        dead = await Catalog(pool, run.prefix).dead_letters_of_events(ids)
    finally:
        await pool.close()
    return {d.entry_id: d.reason for d in dead}


def test_the_demo_uses_names_no_application_uses() -> None:
    assert (demo.SCHEMA, demo.TOPIC, demo.GROUP, demo.KEY_PREFIX) == (
        "conveyor_demo",
        "demo",
        "demo-mailer",
        "conveyor-demo",
    )
    assert demo.GRPC_ADDR not in ("127.0.0.1:50051", "127.0.0.1:50052")
    shown = run_conveyor(["demo", "--help"], {"COLUMNS": "200"})
    assert "CONVEYOR_DEMO_KEY_PREFIX" in shown.stdout and "conveyor-demo" in shown.stdout


@dataclass(frozen=True)
class User:
    """A user's app on topic `identity`: a relay of its schema and a consumer group."""

    schema: str
    prefix: str
    group: str


@pytest.fixture(params=[wire.DEFAULT_PREFIX, "unique"])
async def user(
    request: pytest.FixtureRequest, database_url: str, other_schema: str, redis_client: Any
) -> AsyncIterator[User]:
    """The README's names: default key prefix (or one of the test's own) and topic `identity`;
    a group of the test's own, created at the stream's end as a running app's would be."""
    prefix = request.param if request.param != "unique" else f"t{uuid.uuid4().hex[:12]}"
    found = User(other_schema, prefix, f"mailer-{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(migrations.upgrade, database_url, other_schema)
    keys = wire.Keys("identity", prefix)
    await redis_client.xgroup_create(keys.events, found.group, id="$", mkstream=True)
    try:
        yield found
    finally:
        await _forget_user(redis_client, database_url, found)


async def _forget_user(r: Any, database_url: str, found: User) -> None:
    """Remove the user's group, its retry stream, its events' entries and its registry rows;
    the topic's stream too when nothing else is left in it."""
    keys = wire.Keys("identity", found.prefix)
    await r.xgroup_destroy(keys.events, found.group)
    await r.delete(keys.retry(found.group))
    conn = await asyncpg.connect(database_url)
    try:
        ours = await conn.fetch(f"SELECT entry_id FROM {found.schema}.event_ledger")
        if ours:
            await r.xdel(keys.events, *(row[0] for row in ours))
        if not await r.xlen(keys.events) and not await r.xinfo_groups(keys.events):
            await r.delete(keys.events)
        await conn.execute(
            "DELETE FROM conveyor.consumers WHERE key_prefix = $1 AND consumer_group = $2",
            found.prefix,
            found.group,
        )
    finally:
        await conn.close()


@pytest.fixture
def user_processes(user: User, database_url: str, redis_url: str) -> Iterator[None]:
    """`conveyor relay` and `conveyor consume` of the user's app, running."""
    env = {
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_REDIS_URL": redis_url,
        "TEST_EFFECTS_SCHEMA": user.schema,
    }
    common = ["--key-prefix", user.prefix, "--grpc-addr", "127.0.0.1:0"]
    relay = start_conveyor(["relay", "--schema", user.schema, *common], env)
    consumer = start_conveyor(
        [
            "consume",
            "--group",
            user.group,
            "--router",
            "tests.integration.effects_router:router",
            "--ledger-schema",
            user.schema,
            "--allow-unauthenticated",
            *common,
        ],
        env,
    )
    try:
        port_of(relay, [])
        port_of(consumer, [])
        yield
    finally:
        stop(consumer)
        stop(relay)


async def test_demo_beside_a_users_relay_and_consumer_leaves_both_alone(
    demo_run: DemoRun, user: User, user_processes: None, pg: asyncpg.Connection
) -> None:
    await create_effects(pg, user.schema)
    proc = await asyncio.create_subprocess_exec(
        CONVEYOR,
        *demo_run.args,
        env={**os.environ, **demo_run.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with pg.transaction():  # the user's app registers someone while the demo runs
        mine = await enqueue(
            pg,
            events_pb2.UserRegistered(user_id="alice", email="alice@example.com"),
            aggregate_type="user",
            aggregate_id="alice",
            topic="identity",
            schema=user.schema,
        )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, err.decode()

    async def applied() -> bool:
        rows = await pg.fetch(f"SELECT event_id FROM {user.schema}.effects")
        return [r[0] for r in rows] == [mine]

    await wait_until(applied, what="the user's own event applied by the user's consumer")
    assert Counter((await demo_dead_letters(demo_run, pg)).values()) == expected_dead_letters()
    demo_ids = await demo_event_ids(pg, demo_run.schema)
    assert len(demo_ids) == EVENTS
    taken = await pg.fetchval(
        f"SELECT count(*) FROM {user.schema}.event_ledger WHERE event_id = ANY($1::uuid[])",
        demo_ids,
    )
    assert taken == 0
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM conveyor.dead_letters WHERE key_prefix = $1 "
            "AND (event_id = ANY($2::uuid[]) OR consumer_group = $3)",
            user.prefix,
            demo_ids,
            user.group,
        )
        == 0
    )
    assert f"key prefix {demo_run.prefix}" in out.decode()


def test_a_demo_whose_events_cannot_settle_in_time_says_what_is_missing(demo_run: DemoRun) -> None:
    # One event of the run is retried three times, 0.2 s apart: it cannot settle within 0.2 s.
    result = run_conveyor([*demo_run.args, "--time-limit", "0.2"], demo_run.env, timeout=120)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("conveyor: error: only "), error
    assert f"of {EVENTS} demo events settled within 0.2 s;" in error
    assert "still pending, e.g. " in error
    assert any(t in error for t in ("(UserRegistered)", "(EmailVerified)", "(UserDeleted)"))
    assert "relay" in error or "--time-limit" in error


async def test_printed_commands_run_as_printed_and_never_reprocess_a_rejected_letter(
    demo_run: DemoRun, pg: asyncpg.Connection
) -> None:
    result = run_conveyor(demo_run.args, demo_run.env, timeout=180)  # stdout is a pipe
    assert result.returncode == 0, result.stderr
    dead = await demo_dead_letters(demo_run, pg)
    lines = result.stdout.splitlines()
    commands = [line.strip() for line in lines if line.startswith("  conveyor ")]
    by_verb = {" ".join(c.split()[1:3]): c for c in commands}
    assert sorted(by_verb) == [
        "consume --group",
        "dlq inspect",
        "dlq report",
        "dlq reprocess",
        "dlq resolve",
        "health --wait",
    ]
    serve_line = by_verb["consume --group"]
    assert len(serve_line) > 80 and serve_line.endswith("--allow-unauthenticated &")
    assert all(c.endswith(" --target 127.0.0.1:50062") for c in commands if c != serve_line)
    reprocess, resolve = by_verb["dlq reprocess"], by_verb["dlq resolve"]

    def named(line: str) -> set[str]:
        return {word for word in shlex.split(line) if word in dead}

    assert {dead[i] for i in named(reprocess)} == {"max_attempts"}
    assert {dead[i] for i in named(resolve)} == {"rejected"}
    assert named(reprocess) | named(resolve) == set(dead)

    serve = shlex.split(serve_line.removesuffix("&"))
    serve[serve.index("--grpc-addr") + 1] = "127.0.0.1:0"  # the printed port may be taken here
    consumer = start_conveyor(serve[1:], demo_run.env)
    try:
        port = port_of(consumer, [])
        for line in (by_verb["dlq report"], reprocess, resolve):
            args = shlex.split(line.replace("127.0.0.1:50062", f"127.0.0.1:{port}"))[1:]
            ran = run_conveyor(args, demo_run.env)
            assert ran.returncode == 0, (line, ran.stderr)

        async def confirmed() -> bool:
            users = demo.unreachable_users("", EVENTS)
            rows = await pg.fetch(
                f"SELECT user_id FROM {demo_run.schema}.demo_mail WHERE kind = 'confirmed'"
            )
            got = {r[0].split("-", 1)[1] for r in rows}
            return {u.split("-", 1)[1] for u in users} <= got

        await wait_until(confirmed, what="the reprocessed verifications applied")
    finally:
        stop(consumer)


def test_demo_refuses_a_silly_event_count(database_url: str) -> None:
    result = run_conveyor(["demo", "--events", "0"], {"CONVEYOR_DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "--events must be 1-100000" in result.stderr


def test_the_printed_commands_work_when_pasted_as_one_block(demo_run: DemoRun) -> None:
    """`consume ... &` first, then `health --wait` before the `dlq` commands that ask it."""
    env = demo_run.env
    demo = run_conveyor(demo_run.args, env, timeout=180)
    assert demo.returncode == 0, demo.stderr
    # the failures it causes on purpose go to its log file, not the terminal
    assert not re.search(r"\b(WARNING|ERROR)\b", demo.stderr), demo.stderr
    assert "conveyor-demo.log" in demo.stderr
    assert "  kill $!" in demo.stdout.splitlines(), "it says how to stop the consumer it starts"
    port = free_port()  # the printed 50062 may be taken on a shared machine
    printed = [
        line.strip().replace("127.0.0.1:50062", f"127.0.0.1:{port}")
        for line in demo.stdout.splitlines()
        if line.startswith("  conveyor ")
    ]
    assert printed[0].startswith("conveyor consume ") and printed[0].endswith("&"), printed
    script = "".join(f'{line}\necho "__rc $?"\n' for line in printed) + "wait\n"
    shell = subprocess.Popen(
        ["bash", "--noprofile", "--norc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # `conveyor` on PATH, as in the activated virtualenv the README has the user make
        env={**os.environ, **env, "PATH": f"{os.path.dirname(CONVEYOR)}:{os.environ['PATH']}"},
        start_new_session=True,  # the pasted consumer ends with the shell
    )
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdin.write(script)
    shell.stdin.close()
    out: list[str] = []
    codes: list[int] = []
    try:
        for line in shell.stdout:
            out.append(line)
            if line.startswith("__rc "):
                codes.append(int(line.split()[1]))
                if len(codes) == len(printed):
                    break
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        try:
            shell.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    failed = [(cmd, code) for cmd, code in zip(printed, codes, strict=True) if code != 0]
    assert not failed, "".join(out)
