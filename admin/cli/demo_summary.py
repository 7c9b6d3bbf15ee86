"""The demo's closing summary: its dead letters grouped by reason and error pattern, and the
commands that look at them, reprocess those a retry can fix and resolve the others.

Commands are printed with plain `print`, one per line, so they are never wrapped mid-command
whatever the terminal's width, or when stdout is a pipe.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from rich.console import Console
from rich.table import Table

from admin.catalog import DeadLetterRecord
from admin.cli.options import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, redact

if TYPE_CHECKING:
    from admin.cli.demo import Names

SHOWN_IDS: Final = 15
"""Entry ids a printed command names; beyond that it selects by filter or says how many more."""

# The dead-letter report's normalisers (admin/catalog/reports.py), in Python's regex dialect:
# quoted text first, a UUID before the hex run it holds, then any word holding a digit (an
# id such as `4f2a1c-u5`, or a number).
_NORMALISERS: Final = (
    (re.compile(r"""'[^']*'|"[^"]*\""""), "<str>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"\b(0x)?(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"[\w.-]*\d[\w-]*"), "<id>"),
)

_RETRYABLE: Final = {"max_attempts"}
"""Reasons a retry can cure: the handler failed for a cause that may be gone (the demo's mailbox
outage is over when the summary is shown). Every other reason fails again as it is."""

_WHY_NOT: Final = {
    "rejected": "the handler raised Reject, so a retry fails again. Fix the data, or resolve them",
    "unknown_type": "no handler takes this type. Add one and reprocess, or resolve them",
}
_WHY_NOT_DEFAULT: Final = "the event itself is unusable, so a retry fails again. Resolve them"


def pattern(message: str | None) -> str:
    """`message` with what varies between events (quoted text, ids, numbers) blanked out."""
    text = (message or "")[:1000]
    for regex, placeholder in _NORMALISERS:
        text = regex.sub(placeholder, text)
    return text


@dataclass(frozen=True)
class Kind:
    """Dead letters that share a reason, an error class and an error pattern."""

    reason: str
    error: str
    letters: tuple[DeadLetterRecord, ...]

    @property
    def example(self) -> str:
        return min((d.entry_id for d in self.letters), key=_entry_order)


def _entry_order(entry_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in entry_id.split("-"))


def kinds(dead: Sequence[DeadLetterRecord]) -> list[Kind]:
    """`dead` grouped by reason, error class and pattern, the largest group first."""
    groups: dict[tuple[str, str], list[DeadLetterRecord]] = {}
    for d in dead:
        error = f"{d.error_class or '?'}: {pattern(d.error_message)}"
        groups.setdefault((d.reason, error), []).append(d)
    found = [Kind(reason, error, tuple(ls)) for (reason, error), ls in groups.items()]
    return sorted(found, key=lambda k: (-len(k.letters), k.reason, k.error))


def show(dead: Sequence[DeadLetterRecord], names: Names, topic: str, group: str, addr: str) -> None:
    """Print the summary of a run's dead letters to stdout."""
    found = kinds(dead)
    table = Table(title=f"{len(dead)} dead letters of this run, by reason and error")
    for column in ("reason", "error", "count", "example entry"):
        table.add_column(column)
    for kind in found:
        table.add_row(kind.reason, kind.error, str(len(kind.letters)), kind.example)
    Console(highlight=False).print(table)
    for line in commands(found, names, topic, group, addr):
        print(line)


def commands(found: Sequence[Kind], names: Names, topic: str, group: str, addr: str) -> list[str]:
    """What to run next, as lines: prose, and commands indented by two spaces."""
    target = f"--target {addr}"
    serve = (
        f"conveyor consume --group {group} --topic {topic} --router admin.cli.demo:router "
        f"--ledger-schema {names.schema} --key-prefix {names.key_prefix}{_connections(names)} "
        f"--grpc-addr {addr} --allow-unauthenticated &"
    )
    example = found[0].example if found else "ENTRY-ID"
    lines = [
        "",
        f"The demo's names: schema {names.schema}, topic {topic}, group {group}, "
        f"key prefix {names.key_prefix}.",
        f"To look at its dead letters, run a consumer of its group (AdminService on {addr}), "
        "wait until it answers, then ask it:",
        f"  {serve}",
        f"  conveyor health --wait --timeout 30 {target}",
        f"  conveyor dlq report --stream {topic} --hours 1 {target}",
        f"  conveyor dlq inspect --stream {topic} --id {example} {target}",
    ]
    by_reason: dict[str, list[DeadLetterRecord]] = {}
    for kind in found:
        by_reason.setdefault(kind.reason, []).extend(kind.letters)
    for reason, letters in by_reason.items():
        ids = sorted((d.entry_id for d in letters), key=_entry_order)
        lines.append("")
        if reason in _RETRYABLE:
            lines += _reprocess(reason, ids, topic, target)
        else:
            lines += _resolve(reason, ids, topic, target)
    return [*lines, "", "Then stop the consumer (the shell's last background job):", "  kill $!"]


def _reprocess(reason: str, ids: list[str], topic: str, target: str) -> list[str]:
    head = (
        f"{reason} ({len(ids)}): retried until their attempts ran out while the demo's "
        "mailboxes were down; they are back, so a reprocess succeeds"
    )
    if len(ids) <= SHOWN_IDS:
        chosen = " ".join(f"--id {i}" for i in ids)
        return [head + ":", f"  conveyor dlq reprocess --stream {topic} {chosen} {target}"]
    return [
        head + f" (every open {reason} letter of topic {topic}, earlier demo runs' included):",
        f"  conveyor dlq reprocess --stream {topic} --reason {reason} --yes {target}",
    ]


def _resolve(reason: str, ids: list[str], topic: str, target: str) -> list[str]:
    why = _WHY_NOT.get(reason, _WHY_NOT_DEFAULT)
    chosen = " ".join(f"--id {i}" for i in ids[:SHOWN_IDS])
    lines = [
        f"{reason} ({len(ids)}): {why}:",
        f'  conveyor dlq resolve --stream {topic} {chosen} --reason "demo data" {target}',
    ]
    if len(ids) > SHOWN_IDS:
        lines.append(
            f"  conveyor dlq list --stream {topic} --reason {reason} --state open {target}"
            f"  # the other {len(ids) - SHOWN_IDS}"
        )
    return lines


def _connections(names: Names) -> str:
    """Flags for the connections the shell would not give a consumer by itself."""
    flags = ""
    for flag, url, envvar, default in (
        ("--database-url", names.database_url, "CONVEYOR_DATABASE_URL", DEFAULT_DATABASE_URL),
        ("--redis-url", names.redis_url, "CONVEYOR_REDIS_URL", DEFAULT_REDIS_URL),
    ):
        if url != os.environ.get(envvar, default):
            flags += f" {flag} {shlex.quote(redact(url))}"
    return flags
