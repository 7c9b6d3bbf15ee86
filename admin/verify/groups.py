"""The consumer groups `conveyor verify` looks at: the catalog registry's groups of the deployment,
and the groups each topic stream has; each with its ledger schema, or why it cannot be verified."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from admin.catalog import Catalog
from admin.catalog.layouts import named_keys
from admin.errors import InvalidInput
from admin.verify.report import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    UNKNOWN_MODE,
    GroupReport,
    TopicState,
)
from admin.verify.streams import GroupInfo, TopicStream
from admin.verify.tables import has_table, ledgers_of
from conveyor import database
from conveyor.entry_ids import EntryId

AT_LEAST_ONCE_WHY = "not verifiable (at-least-once): no ledger records what it applied"
"""Why an at-least-once group is listed, not verified."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which groups to verify, and the ledger schemas the command line gives."""

    groups: tuple[str, ...] = ()
    """Only these groups; every group of the deployment when empty."""
    ledger_schemas: Mapping[str, str] = field(default_factory=dict)
    """Group -> ledger schema, over what the registry says."""
    default_ledger_schema: str | None = None
    """The ledger schema of groups whose registry row does not say (none, or only a stream)."""


class Groups:
    """The deployment's groups, found as the window's topics come up: a group is on a topic when
    a registered member consumes it or the topic's stream has the group."""

    def __init__(self, catalog: Catalog, client: object, selection: Selection) -> None:
        self._catalog = catalog
        self._pool: asyncpg.Pool = catalog.pool
        self._client = client
        self._selection = selection
        self._ledgers: dict[str, str | None] = {}
        """Registered group -> ledger schema (None: at-least-once)."""
        self._registered: dict[str, set[str]] = {}
        """Topic -> registered groups consuming it."""
        self._topics: dict[str, list[GroupReport]] = {}
        """Topic -> the groups on it (those selected), once looked at."""
        self._consumed: set[str] = set()
        """Topics some group (selected or not) is on."""
        self._positions: dict[tuple[str, str], EntryId | None] = {}
        """(group, topic) -> the group's last-delivered id there (None: not on the stream)."""
        self._last_entries: dict[str, EntryId | None] = {}
        """Topic -> its stream's last entry, read with the positions."""
        self.reports: dict[str, GroupReport] = {}

    async def load(self, topics: Sequence[str] = ()) -> None:
        """Read the registry and look at `topics`, by default the registered ones."""
        self._ledgers = await self._catalog.group_ledgers()
        for registered in await self._catalog.stream_groups():
            self._registered.setdefault(registered.topic, set()).add(registered.group)
        for topic in topics or sorted(self._registered):
            await self.on_topic(topic)

    async def check(self) -> None:
        """Once every topic of the window was looked at: InvalidInput when a group the
        selection names is none of the groups found; a report for each selected group."""
        known = {*self._ledgers, *self._seen}
        for option, named in (
            ("--group", self._selection.groups),
            ("--ledger-schema", self._selection.ledger_schemas),
        ):
            if unknown := [g for g in named if g not in known]:
                message = self._unknown(unknown[0], option, sorted(known))
                raise InvalidInput(message, field="group", value=unknown[0])
        for group in self._selection.groups:
            await self._report(group)  # registered, but on none of the topics looked at

    def _unknown(self, group: str, option: str, known: Sequence[str]) -> str:
        where = f"no consumer of it is registered under key prefix {self._catalog.key_prefix!r}"
        if self._topics:
            where += f", and no stream of the topics {', '.join(sorted(self._topics))} has it"
        return (
            f"unknown group {group!r} ({option}): {where}; groups there: "
            f"{', '.join(known) or 'none'}"
        )

    @property
    def _seen(self) -> set[str]:
        return {name for name, _ in self._positions}

    def position(self, group: str, topic: str) -> tuple[EntryId | None, EntryId | None]:
        """The group's last-delivered id on the topic's stream, and the stream's last entry,
        when first looked at (None: the group is not on it; the stream is empty or gone)."""
        return self._positions.get((group, topic)), self._last_entries.get(topic)

    async def on_topic(self, topic: str) -> list[GroupReport]:
        """The groups on `topic` (selected ones), looking at its stream the first time."""
        if topic in self._topics:
            return self._topics[topic]
        stream = TopicStream(self._client, named_keys(topic, self._catalog.key_prefix))
        infos = await stream.groups()
        info = await stream.info() if infos is not None else None
        self._last_entries[topic] = None if info is None else info.last_entry
        names = {*self._registered.get(topic, ()), *(infos or {})}
        if names:
            self._consumed.add(topic)
        reports = []
        for name in sorted(names):
            group = (infos or {}).get(name)
            self._positions[(name, topic)] = None if group is None else group.last_delivered
            if self._selection.groups and name not in self._selection.groups:
                continue
            report = await self._report(name)
            report.topics.append(topic)
            report.streams[topic] = _state(topic, group)
            reports.append(report)
        self._topics[topic] = reports
        return reports

    def consumed(self, topic: str) -> bool:
        """Whether any group is on `topic` (looked at with `on_topic` first)."""
        return topic in self._consumed

    async def _report(self, group: str) -> GroupReport:
        if group not in self.reports:
            report = await self._describe(group)
            if report.mode == UNKNOWN_MODE and group in self._selection.groups:
                raise InvalidInput(
                    f"group {group!r}: {report.not_verified}", field="group", value=group
                )
            self.reports[group] = report
        return self.reports[group]

    async def _describe(self, group: str) -> GroupReport:
        """The group's report, empty, with its mode and ledger, or why it is not verified."""
        chosen = self._selection.ledger_schemas.get(group)
        if chosen is not None:
            return await self._with_ledger(group, chosen, "option")
        if group in self._ledgers:
            schema = self._ledgers[group]
            if schema is None:
                return GroupReport(
                    group,
                    AT_LEAST_ONCE,
                    None,
                    "",
                    not_verified=AT_LEAST_ONCE_WHY,
                )
            return await self._with_ledger(group, schema, "registry")
        if self._selection.default_ledger_schema is not None:
            return await self._with_ledger(group, self._selection.default_ledger_schema, "option")
        found = await ledgers_of(self._pool, group)
        if len(found) == 1:
            return await self._with_ledger(group, found[0], "inferred")
        why = "no ledger holds rows of it" if not found else f"ledgers {', '.join(found)} hold it"
        return GroupReport(
            group,
            UNKNOWN_MODE,
            None,
            "",
            not_verified=f"ledger schema unknown (no registered member; {why}): give "
            f"--ledger-schema {group}=SCHEMA, or it is at-least-once and cannot be verified",
        )

    async def _with_ledger(self, group: str, schema: str, source: str) -> GroupReport:
        if await has_table(self._pool, schema, database.LEDGER_TABLE):
            return GroupReport(group, EXACTLY_ONCE, schema, source)
        if source == "option":
            raise InvalidInput(
                f"invalid --ledger-schema for group {group!r}: schema {schema!r} has no "
                f"{database.LEDGER_TABLE} table",
                field="ledger_schema",
                value=schema,
            )
        return GroupReport(
            group,
            EXACTLY_ONCE,
            schema,
            source,
            not_verified=f"its ledger schema {schema!r} has no {database.LEDGER_TABLE} table",
        )


def _state(topic: str, info: GroupInfo | None) -> TopicState:
    if info is None:
        return TopicState(topic, on_stream=False, lag=None, pending=0)
    return TopicState(topic, on_stream=True, lag=info.lag, pending=info.pending)
