"""What the docs may name, read from the code, and the checks that find what they name wrongly:
`conveyor` command lines, `--flags`, `CONVEYOR_*` variables, exit codes, metric names and
mentions of the project's build steps. Each problem names the file, the line and the thing."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, Histogram, InMemoryMetricReader, Sum
from prometheus_client import CollectorRegistry, generate_latest

from admin.cli import client, reference_tree
from admin.ops.status import ComponentStatus, GroupStatus, RedisStatus, Snapshot
from admin.ops.status_metrics import StatusGauges
from consumers.metrics import ConsumerMetrics
from conveyor import telemetry
from relay.metrics import RelayMetrics
from tests.integration import metrics_support

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
"""Every document a user reads."""

TOOLING = (
    ".ci/*",
    "tests/servers.py",
    "tests/conftest.py",
    "benchmarks/*.py",
    "admin/bench/*.py",
)
"""Where the variables of the test and development environment are read."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Something a document names that the software does not have."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


@dataclass(frozen=True, slots=True)
class Known:
    """What the docs may name."""

    commands: dict[tuple[str, ...], Any]
    """Command path -> click command, `()` being `conveyor` itself."""
    variables: frozenset[str]
    exit_codes: frozenset[int]
    metrics: frozenset[str]
    not_commands: frozenset[str]
    """Text starting with `conveyor ` that names no command: span names."""
    not_metrics: frozenset[str]
    """Identifiers shaped like metric names that are tables and columns (from migrations/)."""


STREAM = "conveyor:{orders}:events"
GROUP = "billing"


@dataclass(frozen=True, slots=True)
class Instrument:
    """One instrument as one process role serves it once it holds a value."""

    name: str
    """Its OpenTelemetry name."""
    kind: str
    """`counter`, `gauge` or `histogram`."""
    unit: str
    attributes: frozenset[str]
    prometheus: frozenset[str]
    """The sample names its Prometheus exposition holds."""
    labels: frozenset[str]
    """Its Prometheus labels, the exporter's `otel_scope_*` and the histograms' `le` left out."""


def _snapshot() -> Snapshot:
    return Snapshot(
        components=(ComponentStatus("conveyor.consumer.orders.billing", "SERVING"),),
        redis=RedisStatus(up=True),
        groups=(GroupStatus("orders", GROUP, 3, 1.5, 2, 1, "exactly_once"),),
        postgres_up=True,
    )


def _record(role: str, provider: MeterProvider) -> None:
    """Build `role`'s instruments on `provider` and give each a value."""
    attrs = {telemetry.ATTR_STREAM: STREAM, telemetry.ATTR_GROUP: GROUP}
    group = GROUP if role == telemetry.ROLE_CONSUMER else None
    gauges = StatusGauges(
        role=role,
        key_prefix="conveyor",
        group=group,
        dependencies=group is not None,
        meter=provider.get_meter(telemetry.METER_ADMIN),
    )
    gauges.watch(_snapshot)
    if role == telemetry.ROLE_RELAY:
        relay = RelayMetrics(provider.get_meter(telemetry.METER_RELAY))
        relay.published.add(1, {telemetry.ATTR_STREAM: STREAM})  # starts the other two at 0
        relay.backlog["public"] = (1, 2.0)
        relay.dependency_up.update(postgres=True, redis=True)
        return
    consumer = ConsumerMetrics(provider.get_meter(telemetry.METER_CONSUMER))
    consumer.start(STREAM, GROUP)  # every counter at 0
    consumer.processing.record(0.002, attrs)
    consumer.end_to_end.record(0.5, attrs)


_KINDS = {Sum: "counter", Gauge: "gauge", Histogram: "histogram"}


@functools.cache
def served_metrics() -> Mapping[str, Mapping[str, Instrument]]:
    """role ("relay", "consumer") -> OpenTelemetry name -> what that role's scrape endpoint
    serves of it, every instrument holding a value (no I/O: the instruments are built here on
    a MeterProvider of their own, read by the same Prometheus reader `--metrics-addr` uses)."""
    served = {}
    for role in (telemetry.ROLE_RELAY, telemetry.ROLE_CONSUMER):
        memory, registry = InMemoryMetricReader(), CollectorRegistry()
        provider = MeterProvider(metric_readers=[memory, PrometheusMetricReader(registry=registry)])
        _record(role, provider)
        data = memory.get_metrics_data()
        assert data is not None
        by_help: dict[str, list[metrics_support.Sample]] = {}
        for sample in metrics_support.samples(generate_latest(registry).decode()):
            by_help.setdefault(sample.help, []).append(sample)
        found = {}
        for metric in (
            m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
        ):
            points = metric.data.data_points
            prom = by_help.pop(metric.description)  # descriptions are unique within a process
            found[metric.name] = Instrument(
                name=metric.name,
                kind=_KINDS[type(metric.data)],
                unit=metric.unit or "",
                attributes=frozenset(k for p in points for k in (p.attributes or {})),
                prometheus=frozenset(s.name for s in prom),
                labels=frozenset(k for s in prom for k in s.labels if k != "le"),
            )
        provider.shutdown()
        served[role] = found
    return served


def metric_names() -> frozenset[str]:
    """What the docs may call a metric: the instruments' OpenTelemetry names (what `conveyor
    metrics` shows) and the Prometheus names the scrape endpoint serves (with the histograms'
    family names)."""
    names = set()
    for instruments in served_metrics().values():
        for i in instruments.values():
            names |= {i.name, *i.prometheus}
            names |= {n.removesuffix("_bucket") for n in i.prometheus if n.endswith("_bucket")}
    return frozenset(names)


def _tooling_variables() -> set[str]:
    found: set[str] = set()
    for pattern in TOOLING:
        for path in ROOT.glob(pattern):
            if path.is_file():
                found.update(re.findall(r"CONVEYOR_[A-Z0-9_]*[A-Z0-9]", path.read_text("utf-8")))
    return found


@functools.cache
def known() -> Known:
    """What the code has, for the docs to name."""
    commands = dict(reference_tree.walk())
    variables = {p.envvar for cmd in commands.values() for p in reference_tree.option_params(cmd)}
    variables |= set(client.ENVIRONMENT_ONLY) | _tooling_variables()
    sql = " ".join(p.read_text("utf-8") for p in (ROOT / "migrations").rglob("*.py"))
    return Known(
        commands=commands,
        variables=frozenset(v for v in variables if v),
        exit_codes=frozenset(c.value for c in reference_tree.exit_codes()),
        metrics=metric_names(),
        not_commands=frozenset(v for k, v in vars(telemetry).items() if k.startswith("SPAN_")),
        not_metrics=frozenset(re.findall(r"[a-z][a-z0-9_]*", sql)),
    )


_FENCE = re.compile(r"^\s*(?:```|~~~)\s*(\w*)")
_SHELLS = {"bash", "sh", "shell", "console", "zsh"}
_INLINE = re.compile(r"`([^`\n]+)`")
_COMMENT = re.compile(r"(?:^|\s)#\s.*$")


def snippets(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, is a shell line) of every command of a shell code block (comments cut
    off, `\\`-continued lines joined), and every inline code span outside code blocks and in
    shell comments. Other code blocks (output, SQL, Python) are skipped."""
    block: str | None = None
    start, joined = 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if fence := _FENCE.match(line):
            block = fence.group(1) if block is None else None
            continue
        comment = _COMMENT.search(line) if block in _SHELLS else None
        prose = line if block is None else comment.group(0) if comment else ""
        if block in _SHELLS:
            code = line[: comment.start()] if comment else line
            start, joined = (start or number), joined + code.rstrip().removesuffix("\\") + " "
            if not code.rstrip().endswith("\\"):
                yield start, joined.strip(), True
                start, joined = 0, ""
        for span in _INLINE.finditer(prose):
            yield number, span.group(1), False


def _pieces(code: str) -> list[list[str]]:
    """The simple commands of a shell line, as words, each without leading `VAR=value`s."""
    found = []
    for piece in re.split(r"&&|\|\||\s\|\s|;|&|\$\(|\(|\)", code):
        words = piece.split()
        while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]) or words[0] == "$"):
            words.pop(0)
        found.append(words)
    return found


def command_problems(text: str, path: str, have: Known) -> list[Problem]:
    """Every `conveyor ...` line naming a command or a flag that does not exist."""
    problems = []
    for number, code, _in_block in snippets(text):
        if code in have.not_commands:
            continue
        for words in _pieces(code):
            if words and (words[0] == "conveyor" or words[0].endswith("/conveyor")):
                problems += [Problem(path, number, w) for w in _check(words[1:], (), have)]
    return problems


_PLACEHOLDER = re.compile(r"<[^>]*>|[A-Z][A-Z_]*|\.\.\.|…")
"""A word standing for any command: `<command>`, `COMMAND`, `...`."""


def _check(words: Sequence[str], path: tuple[str, ...], have: Known) -> list[str]:
    cmd = have.commands[path]
    shown = f"`{reference_tree.name(path)}`"
    for at, word in enumerate(words):
        if word.startswith("-") or _PLACEHOLDER.fullmatch(word):
            break
        if not hasattr(cmd, "commands"):
            break  # an argument
        names = re.split(r"[|/]", word.replace("\\", ""))
        unknown = [n for n in names if n not in cmd.commands]
        if unknown:
            return [
                f"{shown} has no command {', '.join(map(repr, unknown))} "
                f"(it has {', '.join(cmd.commands)})"
            ]
        if len(names) > 1:
            return [p for n in names for p in _check([n, *words[at + 1 :]], path, have)]
        return _check(words[at + 1 :], (*path, word), have)
    return [
        f"{shown} has no flag {flag}"
        for word in words
        for flag in re.findall(r"(?:^|[\[/(])(--?[A-Za-z][\w-]*)", word)
        if flag not in reference_tree.flags(cmd)
    ]


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def variable_problems(text: str, path: str, have: Known) -> list[Problem]:
    """Every `CONVEYOR_*` variable the code does not read (`X_*` names a prefix)."""
    problems = []
    for match in re.finditer(r"CONVEYOR_[A-Z0-9_]*[A-Z0-9*]", text):
        name = match.group(0)
        ok = (
            any(v.startswith(name[:-1]) for v in have.variables)
            if name.endswith("*")
            else name in have.variables
        )
        if not ok:
            problems.append(Problem(path, _line(text, match.start()), f"unknown variable {name}"))
    return problems


_EXIT = re.compile(r"\bexit(?:s|ed|ing)?(?:\s+(?:with|code|codes|status))*\s+(\d+)\b")
_MORE_CODES = re.compile(r"(?:,|\bor|\band)\s+(\d+)\b")


def exit_code_problems(text: str, path: str, have: Known) -> list[Problem]:
    """Every exit code a statement like "exit 0 SERVING, 4 NOT_SERVING" names that no command
    uses."""
    problems = []
    for match in _EXIT.finditer(text):
        clause = re.split(r"[);|`]|\.\s", text[match.start(1) :], maxsplit=1)[0]
        codes = [int(match.group(1)), *(int(c) for c in _MORE_CODES.findall(clause))]
        line = _line(text, match.start())
        problems += [
            Problem(path, line, f"exit code {code}: no command exits with it")
            for code in codes
            if code not in have.exit_codes
        ]
    return problems


_METRIC = re.compile(r"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(\{[a-z_, ]*\})?")


def metric_problems(text: str, path: str, have: Known) -> list[Problem]:
    """Every inline `name` or `name{labels}` shaped like a metric of ours that is not one."""
    # `conveyor_up` aside: schemas and keys are named conveyor_* too (`conveyor_demo`).
    prefixes = {m.split("_")[0] for m in have.metrics} - {"conveyor"}
    problems = []
    for number, code, in_block in snippets(text):
        match = _METRIC.fullmatch(code)
        if in_block or not match or match.group(1) in have.metrics:
            continue
        name, labels = match.groups()
        if labels or (name.split("_")[0] in prefixes and name not in have.not_metrics):
            problems.append(Problem(path, number, f"unknown metric {name}"))
    return problems


def step_problems(text: str, path: str, have: Known) -> list[Problem]:
    """Every mention of the project's build steps ("step 3", "steps 1-4"): docs speak of the
    software only."""
    return [
        Problem(path, _line(text, m.start()), f"speaks of {m.group(0)!r}")
        for m in re.finditer(r"\bsteps?\s+\d+\w*", text, re.IGNORECASE)
    ]


SCRIPT_FLAGS_DOCS: tuple[str, ...] = ()
"""Docs whose standalone `--flags` belong to scripts of their own (none now: the yardstick's
flags in performance.md are written with the script's name, `ideal_pipeline.py --bare`)."""


def flag_problems(text: str, path: str, have: Known) -> list[Problem]:
    """Every standalone inline `--flag` (or `--x/--no-x`) that no `conveyor` command has."""
    if Path(path).name in SCRIPT_FLAGS_DOCS:
        return []
    every = set().union(*(reference_tree.flags(cmd) for cmd in have.commands.values()))
    return [
        Problem(path, number, f"no command has the flag {flag}")
        for number, code, in_block in snippets(text)
        if not in_block and code.startswith("--")
        for flag in re.findall(r"(?:^|/)(--[A-Za-z][\w-]*)", code.split()[0])
        if flag not in every
    ]
