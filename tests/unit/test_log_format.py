"""`--log-format json` writes one JSON object per log line, which a log shipper parses without a
pattern: time, level, logger, the message with its key=value context, and the traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import typer

from admin.cli.options import setup_logging


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_level_logger_message_and_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("info", "json")
    log = logging.getLogger("relay.forwarder")
    log.info("batch published: schema=%s rows=%d", "app", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("claim failed: schema=%s", "app")
    log.debug("not at info")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["level"] == "INFO" and first["logger"] == "relay.forwarder"
    assert first["message"] == "batch published: schema=app rows=3"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_text_stays_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    logging.getLogger("consumers.service").warning("lag high: group=%s", "mailer")
    line = capsys.readouterr().err.strip()
    assert line.endswith(" WARNING consumers.service: lag high: group=mailer")


def test_an_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as raised:
        setup_logging("info", "xml")
    assert raised.value.exit_code == 2
    assert "invalid --log-format 'xml': use text or json" in capsys.readouterr().err
