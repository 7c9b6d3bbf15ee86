"""The README and docs/*.md name only what the software has: every `conveyor ...` command line
names existing commands and flags, every `CONVEYOR_*` variable is read, every exit code mentioned
is one a command uses, every metric name is exported, and no document speaks of build steps."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from admin.cli.durations import parse_since
from tests.unit import docs_support as docs
from tests.unit.docs_support import Known, Problem

Check = Callable[[str, str, Known], list[Problem]]

CHECKS: dict[str, Check] = {
    "commands": docs.command_problems,
    "flags": docs.flag_problems,
    "variables": docs.variable_problems,
    "exit-codes": docs.exit_code_problems,
    "metrics": docs.metric_problems,
    "steps": docs.step_problems,
}


def _cases() -> list[object]:
    return [
        pytest.param(name, doc, id=f"{name}-{doc.relative_to(docs.ROOT)}")
        for name in CHECKS
        for doc in docs.DOCS
    ]


@pytest.mark.parametrize(("check", "doc"), _cases())
def test_the_doc_names_only_what_the_cli_has(check: str, doc: Path) -> None:
    path = doc.relative_to(docs.ROOT).as_posix()
    problems = CHECKS[check](doc.read_text(encoding="utf-8"), path, docs.known())
    assert not problems, "\n".join(map(str, problems))


def test_the_docs_are_read_and_their_command_lines_found() -> None:
    names = {doc.relative_to(docs.ROOT).as_posix() for doc in docs.DOCS}
    assert {"README.md", "docs/operations.md", "docs/configuration.md"} <= names
    text = (docs.ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    lines = [code for _, code, _ in docs.snippets(text) if code.startswith("conveyor ")]
    assert "conveyor relay replay --schema S --since 2h --dry-run" in [
        line.strip().split("  ")[0] for line in lines
    ]


def test_what_the_docs_may_name_comes_from_the_code() -> None:
    have = docs.known()
    assert {("dlq", "list"), ("relay", "replay"), ("migrate", "up")} <= have.commands.keys()
    assert {"CONVEYOR_TARGET", "CONVEYOR_ADMIN_TOKEN", "CONVEYOR_PG_BINDIR"} <= have.variables
    assert {0, 1, 2, 3, 4, 5, 6} <= have.exit_codes
    assert {"outbox_oldest_age", "events_dlq", "consumer_groups_lost"} <= have.metrics
    assert {"outbox_oldest_age_seconds", "events_dlq_total", "consumer_lag_seconds"} <= have.metrics
    assert "event_end_to_end_latency_seconds_bucket" in have.metrics
    assert {"outbox_oldest_age_total", "events_dlq_seconds"}.isdisjoint(have.metrics)
    assert "conveyor process" in have.not_commands
    assert {"event_ledger", "event_id"} <= have.not_metrics


BAD = """\
# Sample

Run `conveyor relay --schema S --nope` and `conveyor dlq nope`; `conveyor dlq list|explode`.
The span `conveyor process` is not a command, and `conveyor dlq ...` is a group.

```bash
CONVEYOR_ADMIN_TOKEN=x conveyor status --json --tall   # then `conveyor nosuch`
conveyor migrate up --schema S && conveyor relay replay --since 2h -y | head
$ .venv/bin/conveyor consume --group g \\
    --router m:r --bogus
conveyor dlq COMMAND --help
```

| `conveyor dlq list\\|inspect` | `--listen/--no-listen` |

```
conveyor relay_eps 31046   (benchmark output, not a command)
```

Set `CONVEYOR_NOPE` or CONVEYOR_RELAY_* (a prefix) or CONVEYOR_ZZZ_*; raise `--no-such-flag`.
`conveyor health` exits 0 SERVING, 4 NOT_SERVING, 11 unknown, or exit code 12 on
a bad day; `buf format -d --exit-code` is not an exit statement.
Watch `outbox_oldest_age_total{schema}`, `events_lost`, `outbox_backlog{schema}` and the
`event_ledger` table. Step 3 brings this; steps 1\N{EN DASH}4 are built.
"""


def test_the_checks_find_every_unknown_thing_with_its_line() -> None:
    have = docs.known()
    found = [str(p) for check in CHECKS.values() for p in check(BAD, "docs/bad.md", have)]
    assert "(it has list, inspect, reprocess" in found[1], "an unknown command lists the real ones"
    assert [line.split(" (it has ")[0] for line in found] == [
        "docs/bad.md:3: `conveyor relay` has no flag --nope",
        "docs/bad.md:3: `conveyor dlq` has no command 'nope'",
        "docs/bad.md:3: `conveyor dlq` has no command 'explode'",
        "docs/bad.md:7: `conveyor status` has no flag --tall",
        "docs/bad.md:7: `conveyor` has no command 'nosuch'",
        "docs/bad.md:8: `conveyor relay replay` has no flag -y",
        "docs/bad.md:9: `conveyor consume` has no flag --bogus",
        "docs/bad.md:20: no command has the flag --no-such-flag",
        "docs/bad.md:20: unknown variable CONVEYOR_NOPE",
        "docs/bad.md:20: unknown variable CONVEYOR_ZZZ_*",
        "docs/bad.md:21: exit code 11: no command exits with it",
        "docs/bad.md:21: exit code 12: no command exits with it",
        "docs/bad.md:23: unknown metric outbox_oldest_age_total",
        "docs/bad.md:23: unknown metric events_lost",
        "docs/bad.md:24: speaks of 'Step 3'",
        "docs/bad.md:24: speaks of 'steps 1'",
    ]


def test_every_time_the_docs_pass_to_since_or_until_is_one_the_cli_takes() -> None:
    # The check above knows flags, not their values: `--since "24h ago"` passed it and failed.
    values = [
        (doc.relative_to(docs.ROOT).as_posix(), m[1], m[2])
        for doc in docs.DOCS
        for m in re.finditer(
            r"(--since|--until)[ =](\"[^\"]*\"|'[^']*'|[^\s`|]+)", doc.read_text(encoding="utf-8")
        )
    ]
    assert len(values) >= 5, values
    refused = []
    for path, flag, value in values:
        if value.isupper() or value.startswith("<"):  # a placeholder such as TIME
            continue
        try:
            parse_since(value.strip("\"'"))
        except ValueError as exc:
            refused.append(f"{path}: {flag} {value}: {exc}")
    assert not refused, "\n".join(refused)
