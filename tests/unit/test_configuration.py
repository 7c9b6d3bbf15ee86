"""Each setting is declared once: the command line's options and variables come from the settings
dataclasses, and docs/configuration.md says what the command line does."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from admin.cli import consume, options, reference, relay
from admin.cli.durations import parse_duration
from admin.cli.setting_options import SettingOptions, field_docs, is_duration

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"

SETTINGS = {
    "ConsumerSettings": consume.CONSUMER,
    "RelaySettings": relay.RELAY,
    "ServerSettings": options.SERVER,
    "AuthSettings": options.AUTH,
    "OpsSettings": options.OPS,
}


def all_options() -> list[tuple[str, Any]]:
    """(command path, option) for every option of every `conveyor` command."""
    found = []

    def walk(cmd: Any, path: str) -> None:
        found.extend((path, p) for p in reference.option_params(cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(reference.command(), "conveyor")
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
