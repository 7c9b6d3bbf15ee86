"""`conveyor bench`'s output: one table for people, one JSON document for machines."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from admin.bench.model import Figure, Sizes

JSON_VERSION = 1
"""Bumped when a key of the JSON document changes meaning or goes away."""


def _number(value: float, unit: str) -> str:
    if unit in ("ms", "MiB") or value < 100:
        return f"{value:,.2f} {unit}"
    return f"{value:,.0f} {unit}"


def table(figures: Sequence[Figure]) -> Table:
    t = Table(title="conveyor bench", title_justify="left")
    for name, justify in (
        ("scenario", "left"),
        ("figure", "left"),
        ("value", "right"),
        ("compared with", "left"),
        ("ratio", "right"),
        ("target", "right"),
        ("met", "center"),
    ):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in figures:
        compared = (
            f"{f.baseline_name}: {_number(f.baseline, f.unit)}"
            if f.baseline is not None and f.baseline_name
            else ""
        )
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[f.met]
        t.add_row(
            f.scenario,
            f.name + (f"\n[dim]{f.detail}[/]" if f.detail else ""),
            _number(f.value, f.unit),
            compared,
            ratio,
            str(f.target) if f.target else "",
            met,
        )
    return t


def print_table(figures: Sequence[Figure], console: Console, *, seconds: float) -> None:
    console.print(table(figures))
    missed = [f for f in figures if f.met is False]
    console.print(
        f"{len(figures)} figures in {seconds:.0f} s; "
        + (f"{len(missed)} missed a target." if missed else "every target met.")
    )


def document(
    figures: Sequence[Figure], sizes: Sizes, *, seconds: float, machine: dict[str, Any]
) -> str:
    return json.dumps(
        {
            "version": JSON_VERSION,
            "seconds": round(seconds, 1),
            "sizes": asdict(sizes),
            "machine": {"python": platform.python_version(), **machine},
            "figures": [f.as_json() for f in figures],
            "missed": sum(1 for f in figures if f.met is False),
        },
        indent=2,
    )
