"""Refusals of bad option values name the option a user types and its variable, not the name of
a settings field."""

from __future__ import annotations

from pathlib import Path

from tests.processes import run_conveyor


def test_tokens_file_beside_allow_unauthenticated_names_the_flag_and_the_variable(
    tmp_path: Path,
) -> None:
    # A user with CONVEYOR_TOKENS_FILE exported pastes the consumer command `conveyor demo`
    # prints, which ends `--allow-unauthenticated &`: the refusal names the flag and where the
    # tokens file came from.
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


BAD_VALUES = [
    (["consume", "--retry-backoff", "10s", "--retry-backoff-max", "1s"], "--retry-backoff-max"),
    (["consume", "--max-stream-length", "0"], "--max-stream-length"),
    (["consume", "--stall-timeout", "0"], "--stall-timeout"),
    (["consume", "--start", "yesterday"], "--start"),
    (["relay", "--concurrency", "99"], "--concurrency"),
    (["relay", "--schema", "signup", "--schema", "signup"], "--schema"),
]


def test_a_bad_value_is_refused_naming_the_flag_that_was_typed() -> None:
    # Every refusal names the flag, so a user finds it in --help and configuration.md.
    common = {
        "consume": ["--group", "g", "--router", "admin.cli.demo:router"],
        "relay": [],
    }
    wrong = []
    for args, flag in BAD_VALUES:
        command = [args[0], *common[args[0]], *args[1:]]
        result = run_conveyor(
            [*command, "--grpc-addr", "127.0.0.1:0", "--allow-unauthenticated"], timeout=60
        )
        assert result.returncode == 2, (command, result.stderr)
        if flag not in result.stderr:
            wrong.append(f"{' '.join(command)}: {result.stderr.strip()}")
    assert not wrong, "\n".join(wrong)


def test_a_schema_named_like_a_setting_is_quoted_as_typed() -> None:
    # `batch_size` is a valid schema name. Expected: the refusal of a repeated --schema quotes
    # the schema names as typed ('batch_size'), not rewritten into
    # '--batch-size (CONVEYOR_BATCH_SIZE)', which names an option the user never gave.
    result = run_conveyor(
        [
            "relay",
            "--schema",
            "batch_size",
            "--schema",
            "batch_size",
            "--grpc-addr",
            "127.0.0.1:0",
            "--allow-unauthenticated",
        ],
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "'batch_size'" in result.stderr, result.stderr
    assert "CONVEYOR_BATCH_SIZE" not in result.stderr, result.stderr


def test_a_topic_named_like_a_setting_is_quoted_as_typed() -> None:
    # Expected: a consumer refusing a --topic value (a typo: `max_attempts!`) quotes the topic
    # as typed, not as `'--max-attempts (CONVEYOR_MAX_ATTEMPTS)!'`, which hides the typo.
    result = run_conveyor(
        [
            "consume",
            "--group",
            "g",
            "--router",
            "admin.cli.demo:router",
            "--topic",
            "max_attempts!",
            "--grpc-addr",
            "127.0.0.1:0",
            "--allow-unauthenticated",
        ],
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "'max_attempts!'" in result.stderr, result.stderr
    assert "CONVEYOR_MAX_ATTEMPTS" not in result.stderr, result.stderr
