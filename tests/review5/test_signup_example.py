"""examples/signup's own commands (`python -m signup ...`) meeting bad input, run as the README
runs them: a real process, from examples/signup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "signup"


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
