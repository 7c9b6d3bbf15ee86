"""Each setting is declared once: the command line's options and variables come from the settings
dataclasses, and docs/configuration.md says what the command line does: every command, option,
variable and exit code."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import admin.cli
from admin.cli import client, consume, options, reference, reference_tree, relay
from admin.cli.durations import parse_duration
from admin.cli.setting_options import SettingOptions, field_docs, is_duration

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"

SETTINGS = {
    "ConsumerSettings": consume.CONSUMER,
    "RelaySettings": relay.RELAY,
    "ServerSettings": options.SERVER,
    "AuthSettings": options.AUTH,
    "OpsSettings": options.OPS,
    "StartupSettings": options.STARTUP,
}


def all_options() -> list[tuple[str, Any]]:
    """(command path, option) for every option of every `conveyor` command."""
    found = []

    def walk(cmd: Any, path: str) -> None:
        found.extend((path, p) for p in reference_tree.option_params(cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(reference_tree.command(), "conveyor")
    return found


def test_the_configuration_reference_is_generated_from_the_command_line() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert reference.render(text) == text, f"{DOCS} is stale: run `{reference.REGENERATE}`"


@pytest.mark.parametrize("name", SETTINGS)
def test_every_settings_field_is_an_option_or_listed_as_programmatic(name: str) -> None:
    settings = SETTINGS[name]
    kinds = [settings.bound, set(settings.programmatic), set(settings.nested)]
    assert set.union(*kinds) == set(settings.fields), "a field is neither an option nor listed"
    assert sum(len(k) for k in kinds) == len(settings.fields), "a field is listed twice"


@pytest.mark.parametrize("name", SETTINGS)
def test_every_settings_field_says_what_it_means(name: str) -> None:
    settings = SETTINGS[name]
    assert set(field_docs(settings.settings)) == set(settings.fields)


@pytest.mark.parametrize("name", SETTINGS)
def test_every_option_of_a_variable_defaults_to_the_fields_default(name: str) -> None:
    """Also the options several commands declare alike (`--database-url` of `migrate` too)."""
    settings = SETTINGS[name]
    checked = 0
    for field_name in settings.bound:
        field = settings.fields[field_name]
        if field.default is dataclasses.MISSING:
            continue  # required, or computed: the command gives its own default
        for path, param in all_options():
            if param.envvar != settings.envvar(field_name):
                continue
            default = param.default
            if is_duration(field):
                default = parse_duration(default)
            elif isinstance(field.default, tuple):
                default = tuple(default) if isinstance(default, list) else (default,)
            assert default == field.default, f"{path} {param.opts[0]}"
            checked += 1
    assert checked >= len(settings.bound) // 2


def test_every_variable_is_conveyors_and_means_one_flag_and_one_default() -> None:
    by_variable: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path, param in all_options():
        if param.envvar is None:
            continue
        assert param.envvar.startswith("CONVEYOR_"), f"{path} {param.opts[0]}: {param.envvar}"
        default = param.default[0] if param.default and isinstance(param.default, list) else None
        by_variable[param.envvar].add((param.opts[0], repr(default or param.default)))
    differing = {v: d for v, d in by_variable.items() if len(d) > 1}
    # Each process type listens on its own port by default, so both can run on one host.
    assert differing.keys() <= {"CONVEYOR_GRPC_ADDR"}, differing


def test_grpc_options_are_the_ops_settings_of_relay_and_consume_alike() -> None:
    grpc = [
        (path, param.opts[0])
        for path, param in all_options()
        if param.rich_help_panel == "gRPC and AdminService"
    ]
    relay_flags = [flag for path, flag in grpc if path == "conveyor relay"]
    consume_flags = [flag for path, flag in grpc if path == "conveyor consume"]
    assert relay_flags == consume_flags
    assert {path for path, _ in grpc} == {"conveyor relay", "conveyor consume"}


def test_a_stale_reference_names_the_command_that_regenerates_it(tmp_path: Path) -> None:
    fresh = reference.render(DOCS.read_text(encoding="utf-8"))
    stale = tmp_path / "configuration.md"
    stale.write_text(fresh.replace("CONVEYOR_RELAY_BATCH_SIZE", "X"), "utf-8")
    assert reference.main(["--check", str(stale)]) == 1
    assert reference.main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == fresh


def test_settings_options_refuse_a_field_that_does_not_exist() -> None:
    with pytest.raises(ValueError, match="has no field 'nope'"):
        SettingOptions(relay.RelaySettings, programmatic=("nope",))


def test_every_command_flag_and_variable_is_in_the_reference() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [
        reference_tree.name(path)
        for path, _cmd in reference_tree.walk()
        if f"`{reference_tree.name(path)}" not in text
    ]
    for path, param in all_options():
        missing += [f"{path} {flag}" for flag in param.opts if f"`{flag}" not in text]
        missing += [f"{path} {flag}" for flag in param.secondary_opts if f"/{flag}`" not in text]
        if param.envvar and f"`{param.envvar}`" not in text:
            missing.append(f"{path} {param.opts[0]}: {param.envvar}")
    missing += [env for env in client.ENVIRONMENT_ONLY if f"`{env}`" not in text]
    assert not missing, f"not in {DOCS.name}: {missing}; run `{reference.REGENERATE}`"
    for needed in ("`--target`", "`--token-file`", "`CONVEYOR_ADMIN_TOKEN`", "`conveyor dlq list"):
        assert needed in text


def _exit_constants() -> dict[str, int]:
    """Every integer EXIT_* attribute of every admin.cli module, as Python sees them."""
    found = {}
    for info in pkgutil.iter_modules(admin.cli.__path__, "admin.cli."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.startswith("EXIT_") and type(value) is int:
                found[name] = value
    return found


def test_the_exit_code_table_has_every_exit_constant_of_the_cli_with_its_meaning() -> None:
    codes = reference_tree.exit_codes()
    assert {c.name: c.value for c in codes} == _exit_constants()
    assert [c.value for c in codes] == sorted({c.value for c in codes}), "a value twice"
    text = DOCS.read_text(encoding="utf-8")
    for code in codes:
        assert f"| {code.value} | `{code.name}` | {code.meaning}" in text, code.name
        assert len(code.meaning) > 10, f"{code.name}: say what it means"


def _cli_folder(tmp_path: Path, **modules: str) -> Path:
    folder = tmp_path / "admin" / "cli"
    folder.mkdir(parents=True)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
    return folder


def test_an_exit_constant_without_a_docstring_stops_generation_naming_it(tmp_path: Path) -> None:
    folder = _cli_folder(
        tmp_path,
        options='EXIT_OK = 0\n"""Success."""\nEXIT_FAILURE = 1\n',
        extra='EXIT_GONE: int = 9\n"""Gone."""\n',
    )
    with pytest.raises(ValueError, match=r"admin/cli/options.py:3: EXIT_FAILURE has no docstring"):
        reference_tree.exit_codes(folder)


def test_exit_constants_are_found_wherever_they_live_and_counted_once(tmp_path: Path) -> None:
    folder = _cli_folder(
        tmp_path,
        options='EXIT_OK = 0\n"""Success."""\nEXIT_MOVED = 6\n"""Moved here."""\n',
        client='EXIT_MOVED = 6\n"""Left behind."""\nEXIT_CODES_HELP = "text"\n_EXIT = {}\n',
        token="def f() -> None:\n    EXIT_LOCAL = 3\n",
    )
    codes = reference_tree.exit_codes(folder)
    assert [(c.value, c.name) for c in codes] == [(0, "EXIT_OK"), (6, "EXIT_MOVED")]
    assert "| 6 | `EXIT_MOVED` |" in reference_tree.exit_code_table(codes)


def test_two_names_for_one_exit_code_stop_generation_naming_both(tmp_path: Path) -> None:
    folder = _cli_folder(
        tmp_path,
        options='EXIT_UNAVAILABLE = 7\n"""Down."""\n',
        startup='EXIT_DEPENDENCY = 7\n"""Also down."""\n',
    )
    with pytest.raises(ValueError, match="exit code 7 has two names: EXIT_DEPENDENCY"):
        reference_tree.exit_codes(folder)


def test_every_variable_the_code_names_is_in_the_reference() -> None:
    """Also those read only from the environment, like the admin token."""
    root = DOCS.parents[1]
    text = DOCS.read_text(encoding="utf-8")
    named = {
        f"{path.relative_to(root)}: {name}"
        for folder in ("admin", "relay", "consumers", "proto/conveyor")
        for path in (root / folder).rglob("*.py")
        for name in re.findall(r"[\"'](CONVEYOR_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text("utf-8"))
        if f"`{name}`" not in text
    }
    assert not named, f"not in {DOCS.name}: {sorted(named)}"
