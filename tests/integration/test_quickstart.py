"""The README's Install and Quick start sections, followed as written, from a built wheel.

Their `bash` blocks run, command by command, in one bash process (so `source`, `eval`, `cd` and
`&` jobs behave as in a terminal) started in an empty temporary directory that holds a copy of
examples/ as `conveyor/examples`: the Install block makes a clean virtualenv `.venv-app` there and
activates it, installing the freshly built wheel (pinned by .ci/constraints.txt) where it says
`./conveyor`. Each command must match one of the steps below, which say what a user sees after
it; a command no step knows fails the test, so the README and this test cannot drift apart. The
Quick start's `python` blocks must be verbatim parts of the example files.

Substitutions, so runs never meet each other or a user's processes: CONVEYOR_DATABASE_URL names
a throwaway database (dropped after), CONVEYOR_KEY_PREFIX a fresh key prefix (its keys deleted
after), and the ports 50051/50052 become free ones. Placeholders the README tells the reader to
fill: ENTRY_ID (the dead letter's entry id, from `dlq list --json`) and EVENT_ID (the id
`python -m signup register alice@example.com` printed). A query a person would type a moment
after producing (`dlq list`) is repeated until it shows the outcome, for at most WAIT seconds.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "signup"
WAIT = 60.0
"""Seconds any one command, or the repeating of a query, may take."""


def quickstart_blocks(heading: str = "Quick start") -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README's section `heading`, in order."""
    text = README.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w+)\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)


def commands(block: str) -> list[str]:
    """The commands of a bash block: lines, with `\\`-continued lines joined."""
    return block.replace("\\\n", " ").splitlines()


def test_the_quickstart_code_is_the_example_code() -> None:
    sources = {p: p.read_text() for p in EXAMPLE.rglob("*.py") if "_pb2" not in p.name}
    python = [text for lang, text in quickstart_blocks() if lang == "python"]
    assert len(python) >= 2, "the Quick start shows the producer and the handlers"
    for block in python:
        homes = [p.relative_to(ROOT) for p, source in sources.items() if block in source]
        assert homes, f"README block is not verbatim in any example file:\n{block}"
    languages = {lang for lang, _ in quickstart_blocks()}
    assert languages == {"bash", "python"}, languages


class Shell:
    """One bash process fed commands on stdin; each answers with its output and status."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so cleanup can end the background jobs with it
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.transcript: list[str] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout: float = WAIT) -> tuple[int, str]:
        """Run `command`; its exit status and output (stdout and stderr)."""
        mark = f"__done_{uuid.uuid4().hex}__"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\nprintf '\\n{mark} %d\\n' $?\n")
        self.proc.stdin.flush()
        out: list[str] = []
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                try:
                    line = self.lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line is None:
                    raise AssertionError(f"bash exited during {command!r}: {''.join(out)}")
                if line.startswith(mark):
                    text = "".join(out).rstrip("\n")
                    self.transcript.append(f"$ {command}\n{text}")
                    return int(line.split()[1]), text
                out.append(line)
        finally:
            timer.cancel()
        raise AssertionError(f"{command!r} did not finish in {timeout} s: {''.join(out)}")

    def close(self) -> None:
        """End bash and every job it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        except PermissionError:
            pass


@dataclass
class Walk:
    """What the test learns while following the README."""

    shell: Shell
    relay_port: int
    consumer_port: int
    database_url: str = ""
    redis_url: str = ""
    prefix: str = ""
    event_id: str = ""
    entry_id: str = ""

    def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """Rows of `sql` in the Quick start's database."""
        return asyncio.run(_fetch(self.database_url, sql, *args))

    def keys(self, pattern: str) -> list[bytes]:
        """Redis keys matching `pattern`."""
        return asyncio.run(_keys(self.redis_url, pattern))

    def fill(self, command: str) -> str:
        command = command.replace("127.0.0.1:50051", f"127.0.0.1:{self.relay_port}")
        command = command.replace("127.0.0.1:50052", f"127.0.0.1:{self.consumer_port}")
        if "ENTRY_ID" in command:
            assert self.entry_id, "the README uses ENTRY_ID before `dlq list` showed one"
            command = command.replace("ENTRY_ID", self.entry_id)
        if "EVENT_ID" in command:
            assert self.event_id, "the README uses EVENT_ID before alice's event was produced"
            command = command.replace("EVENT_ID", self.event_id)
        return command

    def ok(self, command: str) -> str:
        code, out = self.shell.run(command)
        assert code == 0, f"{command!r} exited {code}:\n{out}"
        return out


async def _fetch(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _keys(redis_url: str, pattern: str, *, delete: bool = False) -> list[bytes]:
    client = aioredis.from_url(redis_url)
    try:
        found = [key async for key in client.scan_iter(match=pattern, count=500)]
        if delete and found:
            await client.delete(*found)
        return found
    finally:
        await client.aclose()


def _expect(*needles: str) -> Callable[[Walk, str], None]:
    def check(walk: Walk, command: str) -> None:
        out = walk.ok(command)
        for needle in needles:
            assert needle in out, f"{command!r} did not show {needle!r}:\n{out}"

    return check


def _token(walk: Walk, command: str) -> None:
    walk.ok(command)
    assert walk.ok('echo "${CONVEYOR_ADMIN_TOKEN:+set}"') == "set"
    assert re.search(r"^me\s+write\s+[0-9a-f]{64}$", walk.ok("cat tokens.txt"), re.MULTILINE)


def _background(walk: Walk, command: str) -> None:
    walk.ok(command)


def _register_alice(walk: Walk, command: str) -> None:
    out = walk.ok(command)
    found = re.search(r"event ([0-9a-f-]{36})", out)
    assert found, out
    walk.event_id = found[1]


def _dead_letter_list(walk: Walk, command: str) -> None:
    """A person runs it a moment after producing: wait (bounded) until the letter is listed."""
    probe = command + " --json"
    for _ in range(int(WAIT / 0.5)):
        found = re.search(r'"entry_id": "([0-9]+-[0-9]+)"', walk.ok(probe))
        if found:
            walk.entry_id = found[1]
            break
        walk.ok("sleep 0.5")
    assert walk.entry_id, f"no dead letter listed by {command!r} within {WAIT} s"
    out = walk.ok(command)
    assert walk.entry_id in out and "rejected" in out, out


def _stop(walk: Walk, command: str) -> None:
    walk.ok(command)
    walk.ok("wait")  # both jobs exit on SIGTERM, bounded by WAIT
    logs = walk.ok("cat relay.log consume.log")
    assert "Traceback" not in logs, logs
    assert "relay stopped" in logs and "consumer stopped" in logs, logs


def _clean(walk: Walk, command: str) -> None:
    """`python -m signup clean`: the app's tables, its topic's catalog rows and keys are gone."""
    topic = f"{walk.prefix}:{{signup}}:"
    assert walk.keys(topic + "*"), "the Quick start left keys of topic signup to remove"
    walk.ok(command)
    assert not walk.keys(topic + "*")
    assert not walk.query("SELECT to_regclass('signup.users'), to_regclass('mailer.mail')")[0][0]
    for table in ("dead_letters", "dead_letter_cursors"):
        left = walk.query(f"SELECT 1 FROM conveyor.{table} WHERE dlq_stream LIKE $1", topic + "%")
        assert not left, table
    assert not walk.query("SELECT 1 FROM conveyor.consumers WHERE key_prefix = $1", walk.prefix)


def _schema_dropped(walk: Walk, command: str) -> None:
    schema = command.rsplit(" ", 1)[1]
    walk.ok(command)
    assert not walk.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema), schema


STEPS: list[tuple[str, Callable[[Walk, str], None]]] = [
    (r"cd conveyor/examples/signup", _expect()),
    (r"conveyor migrate up --schema (signup|mailer)\b.*", _expect("at head")),
    (r"python -m signup migrate\b.*", _expect("signup.users and mailer.mail")),
    (r'eval "\$\(conveyor token create .*--tokens-file tokens.txt --replace\)"', _token),
    (r"conveyor (relay|consume) .*--tokens-file tokens.txt .*&", _background),
    (r"python -m signup register alice@example.com\b.*", _register_alice),
    (r"python -m signup mail alice@example.com", _expect("welcome mail to alice@")),
    (r"python -m signup verify alice@example.com\b.*", _expect("verified alice@example.com")),
    (r"python -m signup mail alice@example.com --kind verified", _expect("verified mail to")),
    (r"python -m signup register bob.example.com\b.*", _expect("signed up bob.example.com")),
    (r"conveyor dlq list --stream signup --target \S+$", _dead_letter_list),
    (r"conveyor dlq inspect .*", _expect('"email": "bob.example.com"', "rejected")),
    (r"conveyor status .*", _expect("SERVING", "signup", "mailer")),
    (r"conveyor trace .*", _expect("success", "signup.v1.UserSignedUp")),
    (r"conveyor dlq reprocess .*--dry-run.*", _expect("would requeue 1")),
    (r"conveyor dlq resolve .*", _expect("resolved 1 of 1")),
    (r"kill %1 %2", _stop),
    (r"python -m signup clean", _clean),
    (r"conveyor migrate down base --schema (signup|mailer)", _schema_dropped),
]


def _step(
    command: str, steps: list[tuple[str, Callable[[Walk, str], None]]]
) -> Callable[[Walk, str], None]:
    for pattern, check in steps:
        if re.fullmatch(pattern, command):
            return check
    raise AssertionError(f"README command this test does not know: {command!r}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conveyor's wheel, freshly built from this checkout."""
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT))
    (found,) = dist.glob("*.whl")
    return found


@pytest.fixture
def scratch(database_url: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """A throwaway database URL and a key prefix; both are gone after the test."""
    name = f"quickstart_{uuid.uuid4().hex[:12]}"
    prefix = f"qs-{uuid.uuid4().hex[:12]}"

    asyncio.run(_fetch(database_url, f"CREATE DATABASE {name}"))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url, prefix
    finally:
        asyncio.run(_fetch(database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        asyncio.run(_keys(redis_url, f"{prefix}:*", delete=True))


def _install_steps(wheel: Path) -> list[tuple[str, Callable[[Walk, str], None]]]:
    """The README's Install block, with the wheel in place of the clone (the constraints pin the
    dependencies to CI's versions)."""
    pinned = f"-q --disable-pip-version-check -c {ROOT / '.ci/constraints.txt'} {wheel}"

    def pip(walk: Walk, command: str) -> None:
        code, out = walk.shell.run(command.replace("./conveyor", pinned), timeout=600)
        assert code == 0, out

    def activate(walk: Walk, command: str) -> None:
        walk.ok(command)
        assert walk.ok("command -v conveyor") == str(walk.shell.cwd / ".venv-app/bin/conveyor")

    return [
        (r"python3 -m venv \.venv-app", _expect()),
        (r"\.venv-app/bin/pip install \./conveyor", pip),
        (r"source \.venv-app/bin/activate", activate),
        (r"conveyor --help", _expect("Usage: conveyor", "token")),
    ]


@pytest.mark.slow
def test_the_quickstart_runs_as_written(
    wheel: Path, scratch: tuple[str, str], redis_url: str, tmp_path: Path
) -> None:
    database_url, prefix = scratch
    shutil.copytree(
        EXAMPLE, tmp_path / "conveyor/examples/signup", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        CONVEYOR_DATABASE_URL=database_url,
        CONVEYOR_REDIS_URL=redis_url,
        CONVEYOR_KEY_PREFIX=prefix,
        COLUMNS="200",  # tables whole, not squeezed to a pipe's 80 columns
    )
    shell = Shell(tmp_path, env)
    walk = Walk(shell, _free_port(), _free_port(), database_url, redis_url, prefix)
    ran: list[str] = []
    try:
        for heading, steps in (("Install", _install_steps(wheel)), ("Quick start", STEPS)):
            for lang, block in quickstart_blocks(heading):
                if lang != "bash":
                    continue
                for command in commands(block):
                    bare = command.split("  #", 1)[0].strip()  # without its comment
                    _step(bare, steps)(walk, walk.fill(command))
                    ran.append(bare)
        assert ran[0] == "python3 -m venv .venv-app", "the Install section starts a virtualenv"
        assert "kill %1 %2" in ran, "the Quick start stops what it started"
        assert ran[-1].startswith("conveyor migrate down base"), "and removes what it created"
    except AssertionError as exc:
        transcript = "\n".join(shell.transcript)
        raise AssertionError(f"{exc}\n\n--- transcript ---\n{transcript}") from None
    finally:
        shell.close()


def test_the_your_events_page_shows_the_example_files() -> None:
    """docs/your-events.md's proto, buf configuration and handler lines are the example's."""
    page = (ROOT / "docs" / "your-events.md").read_text()
    blocks = re.findall(r"^```(proto|yaml|python)\n(.*?)^```$", page, flags=re.DOTALL | re.M)
    assert {lang for lang, _ in blocks} == {"proto", "yaml", "python"}
    sources = [p.read_text() for p in EXAMPLE.rglob("*") if p.suffix in (".proto", ".yaml", ".py")]
    for _, block in blocks:
        assert any(block in source for source in sources), f"not in examples/signup:\n{block}"
