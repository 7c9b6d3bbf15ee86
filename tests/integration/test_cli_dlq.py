"""`conveyor dlq list|inspect|reprocess|resolve|report` against an in-process server with a fake
AdminService.

What users see is asserted: the predecessor's command forms, tables, JSON, exit codes, and what
reaches the server (topic, idempotency key, bearer token).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from admin.cli import reprocessing
from conveyor.v1 import admin_pb2, dead_letter_pb2
from tests.integration.cli_support import (
    ENTRY,
    TOKEN,
    FakeAdmin,
    dead_letter,
    fixture_fake,  # noqa: F401 - a pytest fixture
    fixture_run,  # noqa: F401 - a pytest fixture
    fixture_served,  # noqa: F401 - a pytest fixture
    progress,
    stderr_line,
    timestamp,
)


def test_seed_list_form_sends_topic_identity_and_the_token(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse(
        dead_letters=[dead_letter()]
    )

    result = run("dlq", "list", "--stream", "identity.dlq", "--count", "20")

    assert result.exit_code == 0, result.output
    (request,) = fake.requests("ListDeadLetters")
    assert request.filter.topic == "identity"
    assert request.page_size == 20
    assert fake.calls[0].metadata["authorization"] == f"Bearer {TOKEN}"
    for shown in (
        ENTRY,
        "user_registered",
        "mailer",
        "max_attempts",
        "open",
        "SMTPError: mail server said 451 [/] try",
    ):
        assert shown in result.stdout
    assert "second line" not in result.stdout  # the error is cut to its first line

    wide = run("dlq", "list", "--stream", "identity", "--wide")

    assert wide.exit_code == 0, wide.output
    for shown in ("identity.user_registered", "host-1", "2026-11-29T05:00:00Z", "SMTPError"):
        assert shown in wide.stdout


@pytest.mark.parametrize(
    "flags",
    [
        ["--stream", "conveyor:{identity}:dlq"],
        ["--topic", "identity"],
        ["--stream", "tenant7:{identity}:dlq"],
    ],
)
def test_stream_keys_and_topic_name_the_topic(fake: FakeAdmin, run: Any, flags: list[str]) -> None:
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse()

    result = run("dlq", "list", *flags)

    assert result.exit_code == 0, result.output
    assert "no dead letters on topic identity" in result.stdout
    assert fake.requests("ListDeadLetters")[0].filter.topic == "identity"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--stream", "Identity!"], "invalid topic 'Identity!'"),
        (["list", "--stream", "conveyor:{identity}:events"], "conveyor:{identity}:dlq"),
        (["list", "--reason", "tired"], "unknown dead-letter reason 'tired'"),
        (["list", "--since", "yesterday"], "invalid --since"),
        (["inspect", "--stream", "identity", "--id", "abc"], "invalid --id 'abc'"),
        # Arabic-Indic digits: \d takes them, Redis and the catalog do not.
        (["inspect", "--stream", "identity", "--id", "\u0661\u0662-\u0663"], "invalid --id"),
        (["reprocess", "--stream", "identity", "--id", f"{2**64}-0"], "invalid --id"),
        (["reprocess", "--stream", "identity", "--id", ENTRY, "--group", "g"], "not both"),
        (["reprocess", "--stream", "identity", "--id", ENTRY, "--idempotency-key", " "], "blank"),
        (["report", "--stream", "identity", "--target", " "], "--target"),
    ],
)
def test_bad_input_exits_2_before_any_call(
    fake: FakeAdmin, run: Any, args: list[str], message: str
) -> None:
    result = run("dlq", *args)

    assert result.exit_code == 2, result.output
    assert stderr_line(result).startswith("conveyor: error: ")
    assert message in result.stderr
    assert fake.calls == []


def test_list_json_holds_the_fields_and_sends_every_filter(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse(
        dead_letters=[dead_letter()], next_page_token="p2"
    )

    result = run(
        "dlq",
        "list",
        "--stream",
        "identity.dlq",
        "--json",
        "--event-type",
        "identity.x",
        "--reason",
        "max_attempts",
        "--group",
        "mailer",
        "--error",
        "451",
        "--since",
        "2h",
        "--until",
        "2026-11-29T06:00:00Z",
        "--state",
        "open",
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["next_page_token"] == "p2"
    (letter,) = data["dead_letters"]
    assert {k: letter[k] for k in ("entry_id", "reason", "create_time")} == {
        "entry_id": ENTRY,
        "reason": "DEAD_LETTER_REASON_MAX_ATTEMPTS",
        "create_time": "2026-11-29T05:00:00Z",
    }
    f = fake.requests("ListDeadLetters")[0].filter
    assert (f.topic, f.event_type, f.group, f.error_contains, f.reason, f.state) == (
        "identity",
        "identity.x",
        "mailer",
        "451",
        dead_letter_pb2.DEAD_LETTER_REASON_MAX_ATTEMPTS,
        admin_pb2.DEAD_LETTER_STATE_OPEN,
    )
    assert f.HasField("since")
    assert f.until.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 29, 6, tzinfo=UTC)


def _pages(request: Any) -> admin_pb2.ListDeadLettersResponse:
    page, following = {"": (0, "p2"), "p2": (1, "p3"), "p3": (2, "")}[request.page_token]
    letter = dead_letter(f"1700000000000-{page}")
    return admin_pb2.ListDeadLettersResponse(dead_letters=[letter], next_page_token=following)


def test_all_follows_every_page_and_one_page_hints_the_next(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ListDeadLetters"] = _pages

    one = run("dlq", "list", "--stream", "identity", "--count", "1")
    assert one.exit_code == 0, one.output
    assert "--page-token p2" in one.stdout

    fake.calls.clear()
    every = run("dlq", "list", "--stream", "identity", "--count", "1", "--all", "--json")
    assert every.exit_code == 0, every.output
    assert len(json.loads(every.stdout)["dead_letters"]) == 3
    assert [r.page_token for r in fake.requests("ListDeadLetters")] == ["", "p2", "p3"]


def _inspected(payload_json: str) -> admin_pb2.GetDeadLetterResponse:
    return admin_pb2.GetDeadLetterResponse(
        dead_letter=dead_letter(),
        payload_json=payload_json,
        payload=b"\x0a\x03abc",
        payload_type_url="type.googleapis.com/conveyor.identity.v1.UserRegistered",
        traceback='Traceback (most recent call last):\n  File "mailer.py", line 9\nSMTPError',
        actions=[
            admin_pb2.AuditRecord(
                time=timestamp("2026-11-29T05:10:00"),
                principal="alice",
                action="reprocess",
                target_ids=[ENTRY],
                outcome="ok",
            )
        ],
    )


def test_seed_inspect_form_shows_payload_traceback_and_actions(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetDeadLetter"] = _inspected('{"user_id": "u-42"}')

    result = run("dlq", "inspect", "--stream", "identity.dlq", "--id", ENTRY)

    assert result.exit_code == 0, result.output
    (request,) = fake.requests("GetDeadLetter")
    assert (request.topic, request.entry_id) == ("identity", ENTRY)
    for shown in (
        '"user_id": "u-42"',
        'File "mailer.py", line 9',
        "alice",
        "host-1",
        "0b8f6c1e-53a4-4b9e-9a57-1d1b0c7f3a11",
        "2026-11-29T05:00:00.000Z",
    ):
        assert shown in result.stdout

    fake.answers["GetDeadLetter"] = _inspected("")  # a payload of a type the server does not know
    shown = run("dlq", "inspect", "--stream", "identity", "--id", ENTRY)
    as_json = json.loads(
        run("dlq", "inspect", "--stream", "identity", "--id", ENTRY, "--json").stdout
    )
    assert "CgNhYmM=" in shown.stdout
    assert "conveyor.identity.v1.UserRegistered" in shown.stdout
    assert (as_json["dead_letter"]["attempts"], as_json["payload"]) == (5, "CgNhYmM=")
    assert as_json["actions"][0]["principal"] == "alice"


def test_seed_reprocess_form_shows_counts_and_sends_a_fresh_key(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = progress((0, 1, 0), (1, 1, 1))

    result = run("dlq", "reprocess", "--stream", "identity.dlq", "--id", ENTRY)

    assert result.exit_code == 0, result.output
    (request,) = fake.requests("ReprocessDeadLetters")
    assert (request.topic, list(request.entry_ids), request.dry_run) == ("identity", [ENTRY], False)
    assert str(uuid.UUID(request.idempotency_key)) == request.idempotency_key
    assert "--idempotency-key" not in result.stderr  # an answer came: no retry to offer
    assert "requeued 1, duplicates 0, skipped 0 (1 of 1 dead letters of topic identity)" in (
        result.stdout
    )


def test_reprocess_json_prints_final_counts_with_the_given_key(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = progress((1, 2, 1), (2, 2, 1))

    result = run(
        "dlq",
        "reprocess",
        "--stream",
        "identity",
        "--id",
        ENTRY,
        "--id",
        "1700000000001-0",
        "--idempotency-key",
        "k-1",
        "--rate-limit",
        "50",
        "--dry-run",
        "--json",
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["requeued"], data["total"], data["finished"]) == ("1", "2", True)
    assert (data["idempotency_key"], data["dry_run"], data["topic"]) == ("k-1", True, "identity")
    (request,) = fake.requests("ReprocessDeadLetters")
    assert (request.idempotency_key, request.rate_limit, request.dry_run) == ("k-1", 50.0, True)
    assert list(request.entry_ids) == [ENTRY, "1700000000001-0"]


def test_reprocess_by_filter_needs_yes_without_a_terminal(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = progress((3, 3, 3))

    refused = run("dlq", "reprocess", "--stream", "identity", "--reason", "max_attempts")
    assert refused.exit_code == 2
    assert "--yes" in stderr_line(refused)
    assert fake.calls == []

    done = run("dlq", "reprocess", "--stream", "identity", "--reason", "max_attempts", "--yes")
    assert done.exit_code == 0, done.output
    (request,) = fake.requests("ReprocessDeadLetters")
    assert list(request.entry_ids) == []
    assert request.filter.reason == dead_letter_pb2.DEAD_LETTER_REASON_MAX_ATTEMPTS
    assert "requeued 3" in done.stdout


def test_reprocess_by_filter_on_a_terminal_asks_with_the_count(
    fake: FakeAdmin, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reprocessing, "_stdin_is_tty", lambda: True)
    fake.answers["ReprocessDeadLetters"] = progress((4, 4, 4))

    declined = run("dlq", "reprocess", "--stream", "identity", "--group", "mailer", input="n\n")
    assert declined.exit_code == 1
    assert "Reprocess 4 dead letters of topic identity" in declined.output
    assert [r.dry_run for r in fake.requests("ReprocessDeadLetters")] == [True]

    fake.calls.clear()
    accepted = run("dlq", "reprocess", "--stream", "identity", "--group", "mailer", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    preview, real = fake.requests("ReprocessDeadLetters")
    assert (preview.dry_run, real.dry_run) == (True, False)
    assert preview.idempotency_key != real.idempotency_key


def test_reprocess_cut_short_or_stalled_exits_1(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ReprocessDeadLetters"] = progress((1, 5, 1), finish=False)

    result = run(
        "dlq", "reprocess", "--stream", "identity", "--id", ENTRY, "--idempotency-key", "k-9"
    )

    assert result.exit_code == 1
    assert "--idempotency-key k-9" in result.stderr.splitlines()[-1]

    def stall(request: Any) -> Iterator[Any]:
        time.sleep(1.5)
        yield from progress((1, 1, 1))

    fake.answers["ReprocessDeadLetters"] = stall
    stalled = run("dlq", "reprocess", "--stream", "identity", "--id", ENTRY, "--timeout", "0.5")
    assert stalled.exit_code == 1
    error, hint = stalled.stderr.splitlines()[-2:]
    assert "DEADLINE_EXCEEDED: no answer from" in error
    key = fake.requests("ReprocessDeadLetters")[-1].idempotency_key
    assert f"repeat with --idempotency-key {key} to retry" in hint  # the fresh key, to repeat


def test_resolve_needs_a_reason_before_any_call(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ResolveDeadLetters"] = admin_pb2.ResolveDeadLettersResponse(resolved=2)

    missing = run("dlq", "resolve", "--stream", "identity.dlq", "--id", ENTRY)
    blank = run("dlq", "resolve", "--stream", "identity.dlq", "--id", ENTRY, "--reason", "  ")
    assert (missing.exit_code, blank.exit_code) == (2, 2)
    assert "--reason is required" in stderr_line(missing)
    assert fake.calls == []

    done = run(
        "dlq",
        "resolve",
        "--stream",
        "identity.dlq",
        "--id",
        ENTRY,
        "--id",
        "1700000000001-0",
        "--reason",
        "fixed by hand",
    )
    assert done.exit_code == 0, done.output
    assert "resolved 2 of 2" in done.stdout
    (request,) = fake.requests("ResolveDeadLetters")
    assert (request.topic, request.reason) == ("identity", "fixed by hand")


def test_seed_report_form_shows_tables_and_a_histogram(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetDeadLetterReport"] = admin_pb2.GetDeadLetterReportResponse(
        total=12,
        by_event_type=[admin_pb2.CountByKey(key="identity.user_registered", count=12)],
        by_reason=[
            admin_pb2.CountByKey(key="max_attempts", count=9),
            admin_pb2.CountByKey(key="decode_error", count=3),
        ],
        by_group=[admin_pb2.CountByKey(key="mailer", count=12)],
        fingerprints=[
            admin_pb2.ErrorFingerprint(
                error_class="SMTPError", message="mail server said <n>", count=9
            )
        ],
        histogram=[
            admin_pb2.HourCount(hour_time=timestamp("2026-11-29T04:00:00"), count=3),
            admin_pb2.HourCount(hour_time=timestamp("2026-11-29T05:00:00"), count=9),
        ],
        success_rate=0.975,
        window_start_time=timestamp("2026-11-28T06:00:00"),
        window_end_time=timestamp("2026-11-29T06:00:00"),
    )

    result = run("dlq", "report", "--stream", "identity.dlq", "--hours", "24")
    as_json = run("dlq", "report", "--stream", "identity.dlq", "--json")

    assert result.exit_code == 0, result.output
    assert {(r.topic, r.hours) for r in fake.requests("GetDeadLetterReport")} == {("identity", 24)}
    for shown in (
        "12 dead letters in topic identity",
        "success rate: 97.50 %",
        "75.0 %",
        "mail server said <n>",
        "2026-11-29T05:00Z",
        "█" * 40,
    ):
        assert shown in result.stdout
    assert "█" * 14 in result.stdout.split("2026-11-29T04:00Z")[1].splitlines()[0]
    assert json.loads(as_json.stdout)["by_reason"][1] == {"key": "decode_error", "count": "3"}
