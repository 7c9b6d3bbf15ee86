"""`conveyor token create`: the line it prints or appends parses with the tokens-file parser and
the token it exports verifies against it; bad input exits 2 before anything is written."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from admin.cli.app import app
from admin.ops.settings import Scope
from admin.ops.tokens import Principal, Rejected, TokenStore, parse_tokens


def _create(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["token", "create", *args])
    return result.exit_code, result.stdout, result.stderr


def _exported(stdout: str) -> str:
    """The token from the one line on stdout, `export CONVEYOR_ADMIN_TOKEN=...`."""
    (line,) = stdout.splitlines()
    name, _, token = line.removeprefix("export ").partition("=")
    assert name == "CONVEYOR_ADMIN_TOKEN"
    return token


def test_the_printed_line_parses_and_the_exported_token_verifies(tmp_path: Path) -> None:
    code, stdout, stderr = _create("--principal", "alice@ops", "--scope", "read")
    assert code == 0, stderr
    token = _exported(stdout)
    assert token not in stderr, "the secret is shown once, on stdout only"
    line = next(x for x in stderr.splitlines() if x.startswith("alice@ops "))
    (entry,) = parse_tokens(line, path=tmp_path / "tokens")
    assert (entry.principal, entry.scope, entry.expires) == ("alice@ops", Scope.READ, None)
    store = TokenStore(tmp_path / "tokens", [entry])
    assert store.verify(token) == Principal("alice@ops", Scope.READ)


def test_tokens_file_is_created_private_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    code, stdout, stderr = _create(
        "--principal", "me", "--scope", "write", "--tokens-file", str(path)
    )
    assert code == 0, stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = _exported(stdout)
    code, stdout, stderr = _create(
        "--principal", "dashboards", "--scope", "read", "--expires", "2999-01-31",
        "--tokens-file", str(path),
    )  # fmt: skip
    assert code == 0, stderr
    store = TokenStore.load(path)
    assert store.verify(first) == Principal("me", Scope.WRITE)
    assert store.verify(_exported(stdout)) == Principal("dashboards", Scope.READ)
    assert isinstance(store.verify("not-a-token"), Rejected)
    assert first not in path.read_text(), "the file holds digests, never a token"


def test_an_expiry_reaches_the_store(tmp_path: Path) -> None:
    soon = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    path = tmp_path / "tokens.txt"
    args = ("--principal", "ci", "--scope", "read", "--expires", soon.isoformat())
    code, stdout, _ = _create(*args, "--tokens-file", str(path))
    assert code == 0
    token = _exported(stdout)
    store = TokenStore.load(path)
    assert store.verify(token) == Principal("ci", Scope.READ)
    assert isinstance(store.verify(token, now=soon), Rejected)


def test_a_principal_already_in_the_file_is_refused_and_the_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    assert _create("--principal", "me", "--scope", "write", "--tokens-file", str(path))[0] == 0
    before = path.read_text()
    code, stdout, stderr = _create(
        "--principal", "me", "--scope", "read", "--tokens-file", str(path)
    )
    assert code == 2
    assert stdout == ""
    assert f"{path}:2 already has principal 'me'" in stderr
    assert path.read_text() == before


def test_a_malformed_tokens_file_is_named_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("me write not-a-digest\n")
    code, stdout, stderr = _create(
        "--principal", "you", "--scope", "read", "--tokens-file", str(path)
    )
    assert code == 2
    assert stdout == ""
    assert f"tokens file {path}:1" in stderr
    assert path.read_text() == "me write not-a-digest\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--principal", "cn:alice", "--scope", "read"), "principal 'cn:alice' must be"),
        (("--principal", "-x", "--scope", "read"), "starting with a letter or digit"),
        (("--principal", "a" * 129, "--scope", "read"), "must be 1-128 letters"),
        (("--principal", "bob", "--scope", "admin"), "--scope 'admin' must be read or write"),
        (("--principal", "bob", "--scope", "read", "--expires", "tomorrow"), "not an ISO 8601"),
        (("--principal", "bob", "--scope", "read", "--expires", "2020-01-01"), "has passed"),
    ],
)
def test_bad_input_exits_2_naming_the_option(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "tokens.txt"
    code, stdout, stderr = _create(*args, "--tokens-file", str(path))
    assert code == 2
    assert message in stderr
    assert stdout == ""
    assert not path.exists()


def test_a_rewritten_tokens_file_keeps_its_mode_and_its_link(
    tmp_path: Path,
) -> None:
    # The file is replaced whole (a temporary file renamed over it): a process rereading it on
    # SIGHUP never sees it empty; its mode (group-readable for a service, say) and a symlink to
    # it stay as the operator made them.
    real = tmp_path / "secrets" / "tokens.txt"
    real.parent.mkdir()
    real.write_text("ops read " + "ab" * 32 + "\n")
    real.chmod(0o640)
    link = tmp_path / "tokens.txt"
    link.symlink_to(real)
    code, _, stderr = _create("--principal", "me", "--scope", "read", "--tokens-file", str(link))
    assert code == 0, stderr
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert [e.principal for e in parse_tokens(real.read_text(), path=real)] == ["ops", "me"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["tokens.txt"], "no temporary left"
