"""examples/signup's own commands (`python -m signup ...`) meeting bad input, run as the README
runs them: a real process, from examples/signup; and the README's token line run again, as in a
second terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.processes import CONVEYOR

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "signup"


def signup(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signup", *args],
        cwd=EXAMPLE,
        env={**os.environ, "CONVEYOR_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_malformed_database_url_is_one_line_not_a_traceback() -> None:
    # A user who mistypes CONVEYOR_DATABASE_URL (here: no scheme) expects what the app's
    # docstring promises ("errors are one line on stderr and exit status 1"), as for an
    # unreachable server. Today asyncpg's ClientConfigurationError escapes as a traceback.
    result = signup("register", "x@example.com", database_url="127.0.0.1:5432/postgres")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "CONVEYOR_DATABASE_URL" in result.stderr


def test_mail_refuses_a_negative_wait(database_url: str) -> None:
    # `mail --wait -1` is a typo, not a request: a user expects a usage error (exit 2, as for a
    # missing argument), not a search that gives up at once and says "no mail ... after -1 s".
    result = signup("mail", "nobody@example.com", "--wait", "-1", database_url=database_url)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "--wait" in result.stderr


def token_line() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^eval \"\$\(conveyor token create .*\)\"$", section, re.MULTILINE)
    assert found, "the Quick start makes its token with an `eval` line"
    return found[0]


def new_terminal(command: str, cwd: Path) -> str:
    """Run `command` in a fresh bash (no CONVEYOR_ADMIN_TOKEN), then print the variable."""
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_ADMIN_TOKEN"}
    env["PATH"] = f"{os.path.dirname(CONVEYOR)}:{env['PATH']}"  # the activated virtualenv
    script = f'{command}\necho "token=${{CONVEYOR_ADMIN_TOKEN}}"'
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def test_the_token_line_leaves_a_token_when_run_in_a_second_terminal(tmp_path: Path) -> None:
    # A user expects every `conveyor` command after the set-up block to carry a token, however
    # often the block ran. The second time, `token create` refuses (principal 'me' is already in
    # tokens.txt), `eval` of its empty stdout succeeds, CONVEYOR_ADMIN_TOKEN stays unset, and
    # every `conveyor status` / `dlq` command below it is refused UNAUTHENTICATED; the README
    # says nothing about it.
    line = token_line()
    first = new_terminal(line, tmp_path)
    assert re.search(r"^token=\S+$", first, re.MULTILINE), first
    second = new_terminal(line, tmp_path)
    assert re.search(r"^token=\S+$", second, re.MULTILINE), second
