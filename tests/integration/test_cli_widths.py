"""Every table of the `conveyor` client commands at 80 columns, against an in-process server with
a fake AdminService: no line is wider than 80, and every value that names something (entry ids,
times, states, reasons, instruments) is on one line, whole."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.v1 import admin_pb2, dead_letter_pb2
from tests.integration.cli_support import (
    FakeAdmin,
    dead_letter,
    fixture_fake,  # noqa: F401 - a pytest fixture
    fixture_run,  # noqa: F401 - a pytest fixture
    fixture_served,  # noqa: F401 - a pytest fixture
    timestamp,
)

EVENT_ID = "0b8f6c1e-53a4-4b9e-9a57-1d1b0c7f3a11"
LONG_TYPE = "conveyor.identity.v1.UserRegistered"


def _letters() -> list[admin_pb2.DeadLetter]:
    """Two topics, two groups, four reasons and every state, with long event types."""
    return [
        dead_letter("1764662400000-0", event_type=LONG_TYPE),
        dead_letter(
            "1764662400000-13",
            group="billing-sync",
            reason=dead_letter_pb2.DEAD_LETTER_REASON_DECODE_ERROR,
            state=admin_pb2.DEAD_LETTER_STATE_REPROCESSING,
        ),
        dead_letter(
            "1764662400123-2",
            topic="billing",
            event_type="billing.v1.InvoicePaymentFailedAfterRetries",
            reason=dead_letter_pb2.DEAD_LETTER_REASON_UNKNOWN_TYPE,
            state=admin_pb2.DEAD_LETTER_STATE_REPROCESSED,
            retried_as_entry_id="1764662499999-0",
        ),
        dead_letter(
            "1764662400124-0",
            reason=dead_letter_pb2.DEAD_LETTER_REASON_REJECTED,
            state=admin_pb2.DEAD_LETTER_STATE_RESOLVED,
        ),
    ]


def _actions() -> list[admin_pb2.AuditRecord]:
    return [
        admin_pb2.AuditRecord(
            time=timestamp("2026-11-29T05:10:00"),
            principal="cn:ops-automation.example.internal",
            action="reprocess",
            target_ids=["1764662400000-0", "1764662400000-13", "1764662400123-2"],
            reason="",
            outcome="requeued",
        ),
        admin_pb2.AuditRecord(
            time=timestamp("2026-11-29T05:20:00"),
            principal="alice",
            action="resolve",
            target_ids=["1764662400124-0"],
            reason="the customer was refunded by hand; nothing left to send " * 2,
            outcome="resolved 1",
        ),
    ]


def _fits(output: str, *whole: str) -> None:
    lines = output.splitlines()
    # A page token is printed on a line of its own, unwrapped, to copy whole.
    wide = [line for line in lines if len(line) > 80 and not line.startswith("--page-token ")]
    assert not wide, "lines over 80 columns:\n" + "\n".join(wide)
    for value in whole:
        assert any(value in line for line in lines), f"{value!r} not whole on a line:\n{output}"


def _at_80(run: Any, *args: str) -> str:
    result = run(*args, COLUMNS="80")
    assert result.exit_code == 0, result.output
    return str(result.stdout)


@pytest.mark.parametrize("flags", [[], ["--stream", "identity"], ["--wide"]])
def test_dlq_list_fits_80_columns(fake: FakeAdmin, run: Any, flags: list[str]) -> None:
    letters = _letters()
    if flags[:1] == ["--stream"]:
        letters = [x for x in letters if x.topic == "identity"]
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse(
        dead_letters=letters, next_page_token="eyJhZnRlciI6IDEyMzQ1Njc4OTAsICJmIjogImFiY2RlZiJ9" * 2
    )

    shown = _at_80(run, "dlq", "list", *flags)

    wide = flags == ["--wide"]
    states = [admin_pb2.DeadLetterState.Name(x.state).split("_")[-1].lower() for x in letters]
    if wide and flags != ["--stream", "identity"]:
        states.append("reprocessed -> 1764662499999-0")
    _fits(
        shown,
        *(x.entry_id for x in letters),
        *(x.event_type if wide else x.event_type.rsplit(".", 1)[-1] for x in letters),
        *states,
        "billing-sync",
        "decode_error",
        "unknown_type" if not flags else "rejected",
        "--page-token " + "eyJhZnRlciI6IDEyMzQ1Njc4OTAsICJmIjogImFiY2RlZiJ9" * 2,
    )
    if wide:
        _fits(shown, "2026-11-29T05:00:00Z", "host-1")


def test_dlq_inspect_and_its_actions_fit_80_columns(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetDeadLetter"] = admin_pb2.GetDeadLetterResponse(
        dead_letter=dead_letter("1764662400000-0", event_type=LONG_TYPE),
        payload_json='{"user_id": "u-42", "email": "someone@example.com"}',
        payload_type_url=f"type.googleapis.com/{LONG_TYPE}",
        traceback='Traceback (most recent call last):\n  File "mailer.py", line 9\n',
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        actions=_actions(),
    )

    shown = _at_80(run, "dlq", "inspect", "--stream", "identity", "--id", "1764662400000-0")

    _fits(
        shown,
        "1764662400000-0",
        "1764662400000-13",
        "1764662400124-0",
        LONG_TYPE,
        EVENT_ID,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "2026-11-29T05:10:00Z",
        "cn:ops-automation.example.internal",
        "resolved 1",
    )


def test_dlq_report_fits_80_columns(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetDeadLetterReport"] = admin_pb2.GetDeadLetterReportResponse(
        total=12,
        by_event_type=[admin_pb2.CountByKey(key=LONG_TYPE, count=12)],
        by_reason=[admin_pb2.CountByKey(key="max_attempts", count=12)],
        by_group=[admin_pb2.CountByKey(key="billing-sync", count=12)],
        fingerprints=[
            admin_pb2.ErrorFingerprint(
                error_class="asyncpg.exceptions.UndefinedTableError",
                message='relation "mailer.outbox_mail" does not exist at <n> while sending',
                count=12,
                first_seen_time=timestamp("2026-11-28T07:00:00"),
                last_seen_time=timestamp("2026-11-29T05:00:00"),
            )
        ],
        histogram=[admin_pb2.HourCount(hour_time=timestamp("2026-11-29T05:00:00"), count=12)],
        window_start_time=timestamp("2026-11-28T06:00:00"),
        window_end_time=timestamp("2026-11-29T06:00:00"),
    )

    shown = _at_80(run, "dlq", "report", "--stream", "identity")

    _fits(
        shown,
        LONG_TYPE,
        "billing-sync",
        "11-28 07:00",
        "11-29 05:00",
        "100.0 %",
        "asyncpg.exceptions.UndefinedTableError:",
    )


def test_status_fits_80_columns(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetStatus"] = admin_pb2.GetStatusResponse(
        overall=admin_pb2.COMPONENT_STATE_DEGRADED,
        components=[
            admin_pb2.ComponentStatus(
                name="conveyor.consumer.identity.billing-sync",
                state=admin_pb2.COMPONENT_STATE_NOT_SERVING,
                reasons=["lag 75 s > 60 s", "redis unreachable: ConnectionError at 10.0.0.7"],
            )
        ],
        redis=admin_pb2.RedisStatus(up=True, run_id="4f1b2c3d4e5f60718293a4b5c6d7e8f901234567"),
        outboxes=[admin_pb2.OutboxStatus(schema="identity", backlog=140, oldest_age_seconds=2.5)],
        groups=[
            admin_pb2.GroupStatus(
                topic="identity",
                group="billing-sync",
                lag_entries=123456,
                lag_seconds=7500,
                pending=1234,
                consumers=12,
                mode="exactly-once",
            )
        ],
    )

    shown = _at_80(run, "status")

    _fits(
        shown,
        "conveyor.consumer.identity.billing-sync",
        "NOT_SERVING",
        "4f1b2c3d4e5f60718293a4b5c6d7e8f901234567",
        "exactly-once",
        "123456",
        "125.0 min",
    )


def test_trace_fits_80_columns(fake: FakeAdmin, run: Any) -> None:
    fake.answers["TraceEvent"] = admin_pb2.TraceEventResponse(
        outbox=admin_pb2.OutboxRecord(schema="identity", id=41, topic="identity"),
        stream_entries=[
            admin_pb2.StreamRecord(
                stream="conveyor:{identity}:retry:billing-sync", entry_id="1764662400000-13"
            )
        ],
        ledger=[
            admin_pb2.LedgerRecord(
                schema="identity",
                group="billing-sync",
                result="success",
                process_time=timestamp("2026-11-29T05:30:00"),
                stream="conveyor:{identity}:retry:billing-sync",
                entry_id="1764662400000-13",
            )
        ],
        dead_letters=_letters()[:2],
        actions=_actions(),
    )

    shown = _at_80(run, "trace", EVENT_ID)

    _fits(
        shown,
        "conveyor:{identity}:retry:billing-sync",
        "1764662400000-13",
        "2026-11-29T05:30:00Z",
        "1764662400000-0",
        "cn:ops-automation.example.internal",
    )


def test_metrics_fit_80_columns(fake: FakeAdmin, run: Any) -> None:
    attributes = {"topic": "identity", "group": "billing-sync", "result": "success"}
    fake.answers["GetMetrics"] = admin_pb2.GetMetricsResponse(
        metrics=[
            admin_pb2.Metric(
                name="conveyor.consumer.handler.duration",
                unit="s",
                kind=admin_pb2.METRIC_KIND_HISTOGRAM,
                points=[admin_pb2.MetricPoint(attributes=attributes, count=123456, sum=9876.5)],
            ),
            admin_pb2.Metric(name="outbox_oldest_age", kind=admin_pb2.METRIC_KIND_GAUGE),
        ]
    )

    shown = _at_80(run, "metrics")

    _fits(
        shown,
        "conveyor.consumer.handler.duration",
        "count 123456, sum 9876, mean 0.08",
        "outbox_oldest_age",
        "(no data)",
    )


def test_reprocess_skips_fit_80_columns_and_stay_whole(fake: FakeAdmin, run: Any) -> None:
    detail = (
        "already requeued by cn:ops-automation.example.internal at 2026-11-29T05:10:00Z "
        "(idempotency key 3f2a8c1e-53a4-4b9e-9a57-1d1b0c7f3a11); group billing-sync has not "
        "applied it yet"
    )
    fake.answers["ReprocessDeadLetters"] = [
        admin_pb2.ReprocessDeadLettersResponse(
            done=1,
            total=1,
            skipped=1,
            finished=True,
            skips=[
                admin_pb2.SkippedDeadLetter(
                    entry_id="1764662400000-13",
                    reason=admin_pb2.SKIP_REASON_REPROCESSING,
                    detail=detail,
                )
            ],
        )
    ]

    result = run(
        "dlq", "reprocess", "--stream", "identity", "--id", "1764662400000-13", COLUMNS="80"
    )

    assert result.exit_code == 0, result.output
    # One line per skipped entry, however long: a terminal wraps it, a pipe keeps it whole.
    assert f"  skipped 1764662400000-13: {detail}" in result.stdout.splitlines()
