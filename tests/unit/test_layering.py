"""Imports point one way (docs/STYLE.md, "Layout and layering"): every import of every module of
our packages, read with `ast` (inside functions and `if TYPE_CHECKING:` too), against the rules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PACKAGES = {
    "conveyor": ROOT / "proto" / "conveyor",
    "relay": ROOT / "relay",
    "consumers": ROOT / "consumers",
    "admin": ROOT / "admin",
}
"""Each package of the distribution and the folder it is rooted in."""

GRPC = ("grpc", "grpc_health", "grpc_reflection", "*_pb2_grpc")
"""grpc itself, and the generated service stubs, which import it when they load."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Modules matching `importers` (but not `exempt`) may not import any of `forbidden`.

    Each name is a module or a pattern (`*_pb2_grpc`); it stands for its submodules too.
    """

    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    why: str
    exempt: tuple[str, ...] = ()

    def applies_to(self, module: str) -> bool:
        return _matches(module, self.importers) and not _matches(module, self.exempt)


RULES = (
    Rule(("relay",), ("consumers",), "relay and consumers never import each other"),
    Rule(("consumers",), ("relay",), "relay and consumers never import each other"),
    Rule(("relay", "consumers"), ("admin",), "admin composes the engines, not the reverse"),
    Rule(
        ("conveyor",),
        ("relay", "consumers", "admin"),
        "the contract package depends on no other package of ours",
    ),
    Rule(("admin.catalog",), ("admin.ops", "admin.cli"), "inside admin, cli -> ops -> catalog"),
    Rule(("admin.ops",), ("admin.cli",), "inside admin, cli -> ops -> catalog"),
    Rule(
        ("admin.verify",),
        ("admin.ops", "admin.cli"),
        "verify reads the deployment's tables and streams; only the CLI shows its report",
    ),
    Rule(
        ("admin.migrations",),
        ("admin.ops", "admin.cli", "admin.catalog"),
        "migrations run from the CLI and tests; they need no room of the admin plane",
    ),
    Rule(
        ("admin.errors",),
        ("admin.cli", "admin.ops", "admin.catalog", "admin.migrations"),
        "the admin base errors sit under every room",
    ),
    Rule(
        ("conveyor", "relay", "consumers"),
        GRPC,
        "grpc is imported only in admin (and by the generated stubs beside the protos)",
        exempt=("*_pb2_grpc",),
    ),
    Rule(
        ("conveyor",),
        ("asyncpg", "redis", "hiredis"),
        "the contract package holds conventions, not drivers",
        # The one adapter: every process connects to Redis through this factory, so its
        # connection tuning (hiredis packing, no per-reply timeout, keepalive) is the same
        # in the relay, the consumers and the admin plane, which share nothing else.
        exempt=("conveyor.redis_client",),
    ),
)


def _matches(module: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(module, p) or fnmatchcase(module, f"{p}.*") for p in patterns)


@dataclass(frozen=True, slots=True)
class Import:
    """One module an import statement loads, absolute, with where the statement stands."""

    line: int
    module: str
    statement: str


def imports(source: str, module: str, *, is_package: bool = False) -> Iterator[Import]:
    """Every module `source` (the text of `module`) imports, wherever the statement stands.

    `from a import b` loads `a` and, when `b` is a submodule, `a.b`: both are reported.
    `importlib.import_module("a.b")` with a literal name counts as an import too.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name, ast.unparse(node))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            yield Import(node.lineno, base, ast.unparse(node))
            for alias in node.names:
                yield Import(node.lineno, f"{base}.{alias.name}", ast.unparse(node))
        elif isinstance(node, ast.Call) and (name := _import_module_name(node)) is not None:
            yield Import(node.lineno, name, ast.unparse(node))


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _import_module_name(node: ast.Call) -> str | None:
    """The module `importlib.import_module("literal")` (or `import_module(...)`) loads."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called != "import_module" or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def violations(source: str, module: str, path: str, *, is_package: bool = False) -> list[str]:
    """One line per import of `source` that breaks a rule: file, line, statement and why."""
    found = []
    reported: set[tuple[int, str, Rule]] = set()  # `from a import b` may load two bad modules
    rules = [rule for rule in RULES if rule.applies_to(module)]
    for imported in imports(source, module, is_package=is_package):
        for rule in rules:
            key = (imported.line, imported.statement, rule)
            if key not in reported and _matches(imported.module, rule.forbidden):
                reported.add(key)
                found.append(
                    f"{path}:{imported.line}: {imported.statement!r} loads {imported.module}"
                    f" into {module}: {rule.why}"
                )
    return found


def _modules() -> Iterator[tuple[str, Path]]:
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def test_every_import_of_our_packages_points_the_right_way() -> None:
    found = []
    modules = list(_modules())
    for module, path in modules:
        found += violations(
            path.read_text(encoding="utf-8"),
            module,
            str(path.relative_to(ROOT)),
            is_package=path.name == "__init__.py",
        )
    assert {m.partition(".")[0] for m, _ in modules} == set(PACKAGES), "a package was not found"
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_every_exempt_module_exists() -> None:
    modules = {module for module, _ in _modules()}
    for rule in RULES:
        for exempt in rule.exempt:
            assert any(fnmatchcase(m, exempt) for m in modules), f"{exempt} exempt, but not found"


@pytest.mark.parametrize(
    ("module", "source", "line", "loads"),
    [
        ("relay.outbox", "from consumers.router import Router", 1, "consumers"),
        ("consumers.worker", "def f():\n    import relay.store\n", 2, "relay.store"),
        ("relay.service", "from admin import errors", 1, "admin"),
        (
            "conveyor.wire",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay import Relay\n",
            3,
            "relay",
        ),
        ("admin.catalog.audit", "from admin import ops", 1, "admin.ops"),
        ("admin.catalog.audit", "from ..cli import output", 1, "admin.cli"),
        ("admin.ops.status", "import admin.cli.app", 1, "admin.cli.app"),
        ("admin.migrations", "from admin.catalog.audit import AuditLog", 1, "admin.catalog"),
        ("admin.errors", "from admin.ops import settings", 1, "admin.ops"),
        ("relay.publisher", "import grpc.aio", 1, "grpc.aio"),
        ("consumers.worker", "from grpc_health.v1 import health", 1, "grpc_health.v1"),
        (
            "consumers.worker",
            "from conveyor.v1 import admin_pb2_grpc",
            1,
            "conveyor.v1.admin_pb2_grpc",
        ),
        ("conveyor.wire", "import redis.asyncio", 1, "redis.asyncio"),
        ("conveyor.database", "import asyncpg", 1, "asyncpg"),
        ("relay.service", "x = importlib.import_module('admin.ops.server')", 1, "admin.ops"),
    ],
)
def test_a_forbidden_import_is_named_with_file_and_line(
    module: str, source: str, line: int, loads: str
) -> None:
    found = violations(source, module, "x.py")
    assert len(found) == 1, found
    assert found[0].startswith(f"x.py:{line}: ")
    assert f"loads {loads}" in found[0]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("relay.outbox", "from conveyor import wire"),
        ("admin.cli.app", "from admin.ops import server\nimport relay\nimport consumers"),
        ("admin.ops.auth", "import grpc"),
        ("admin.ops.status", "from admin.catalog import Catalog"),
        ("conveyor.v1.admin_pb2_grpc", "import grpc"),
        ("conveyor.redis_client", "import redis.asyncio as aioredis\nimport hiredis"),
        ("consumers.ledger", "import asyncpg"),
        ("admin.catalog.records", "from .. import errors"),
    ],
)
def test_an_allowed_import_passes(module: str, source: str) -> None:
    assert violations(source, module, "x.py") == []
