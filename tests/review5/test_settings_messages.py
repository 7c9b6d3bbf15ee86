"""Start-up refusals name the option or variable to change, as the other settings errors do
("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")."""

from __future__ import annotations

from pathlib import Path

from tests.processes import run_conveyor


def test_tokens_file_beside_allow_unauthenticated_names_the_flag_and_the_variable(
    tmp_path: Path,
) -> None:
    # A user with CONVEYOR_TOKENS_FILE exported (configuration.md's variable for --tokens-file)
    # pastes the consumer command `conveyor demo` prints, which ends `--allow-unauthenticated &`.
    # Today it exits with "allow_unauthenticated would ignore the tokens file: set only one of
    # them": a Python field name, and not which tokens file setting. A user expects the flag
    # (--allow-unauthenticated) and where the tokens file came from (CONVEYOR_TOKENS_FILE).
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("")
    tokens.chmod(0o600)
    demo_consumer = [
        "consume",
        "--group",
        "demo-mailer",
        "--topic",
        "demo",
        "--router",
        "admin.cli.demo:router",
        "--ledger-schema",
        "conveyor_demo",
        "--key-prefix",
        "conveyor-demo",
        "--grpc-addr",
        "127.0.0.1:0",
        "--allow-unauthenticated",
    ]
    result = run_conveyor(demo_consumer, {"CONVEYOR_TOKENS_FILE": str(tokens)}, timeout=60)
    assert result.returncode != 0
    assert "--allow-unauthenticated" in result.stderr, result.stderr
    assert "CONVEYOR_TOKENS_FILE" in result.stderr, result.stderr
