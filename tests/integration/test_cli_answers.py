"""What the client commands say when the answer is empty or partial, against the fake
AdminService: an empty `dlq list` tells filters, a quiet topic and a mistyped one apart; `dlq
resolve` says why each dead letter was left; `status` of a consumer prints no table of nothing;
`trace` without an outbox row names the schemas looked in and who to ask."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.v1 import admin_pb2, dead_letter_pb2
from tests.integration.cli_support import (
    ENTRY,
    FakeAdmin,
    dead_letter,
    fixture_fake,  # noqa: F401 - a pytest fixture
    fixture_run,  # noqa: F401 - a pytest fixture
    fixture_served,  # noqa: F401 - a pytest fixture
)

GROUPS = admin_pb2.GetStatusResponse(
    redis=admin_pb2.RedisStatus(up=True),
    groups=[
        admin_pb2.GroupStatus(topic="identity", group="mailer"),
        admin_pb2.GroupStatus(topic="billing", group="ledger"),
    ],
)


def _letters_of(topic: str) -> Any:
    """ListDeadLetters of a deployment whose only dead letter is of `topic`, reason rejected."""

    def answer(request: Any) -> admin_pb2.ListDeadLettersResponse:
        f = request.filter
        if f.topic == topic and f.reason in (0, dead_letter_pb2.DEAD_LETTER_REASON_REJECTED):
            return admin_pb2.ListDeadLettersResponse(dead_letters=[dead_letter(topic=topic)])
        return admin_pb2.ListDeadLettersResponse()

    return answer


@pytest.mark.parametrize(
    ("args", "said"),
    [
        # A typo: the name is no topic a group reads, so the user is told to check it.
        (
            ["--stream", "identiy"],
            "no dead letters on topic identiy, and no consumer group of this deployment reads a "
            "topic of that name (topics read: billing, identity): check the name",
        ),
        # A real topic without dead letters: a plain, true answer.
        (["--stream", "billing"], "no dead letters on topic billing"),
        # The topic has dead letters, the filters exclude them.
        (
            ["--stream", "identity", "--reason", "max_attempts"],
            "no dead letters of topic identity match the filters",
        ),
        (["--reason", "max_attempts"], "no dead letters match"),
    ],
)
def test_an_empty_list_says_whether_the_topic_exists(
    fake: FakeAdmin, run: Any, args: list[str], said: str
) -> None:
    fake.answers["ListDeadLetters"] = _letters_of("identity")
    fake.answers["GetStatus"] = GROUPS

    result = run("dlq", "list", *args)

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == said


def test_an_empty_list_stands_when_status_cannot_be_had(fake: FakeAdmin, run: Any) -> None:
    fake.answers["ListDeadLetters"] = admin_pb2.ListDeadLettersResponse()  # GetStatus fails

    result = run("dlq", "list", "--stream", "identiy")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no dead letters on topic identiy"


def test_resolve_says_why_each_dead_letter_was_left(fake: FakeAdmin, run: Any) -> None:
    other = "1700000000001-0"
    fake.answers["ResolveDeadLetters"] = admin_pb2.ResolveDeadLettersResponse(
        resolved=1,
        skips=[
            admin_pb2.SkippedDeadLetter(
                entry_id=ENTRY,
                reason=admin_pb2.SKIP_REASON_RESOLVED,
                detail="already resolved by alice at 2026-11-29T05:00:00Z: not an address",
            )
        ],
    )

    args = ["--id", ENTRY, "--id", other, "--reason", "fixed"]
    result = run("dlq", "resolve", "--stream", "identity", *args, COLUMNS="60")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "resolved 1 of 2 dead letters of topic identity",
        f"  left {ENTRY}: already resolved by alice at 2026-11-29T05:00:00Z: not an address",
    ]


def test_status_of_a_consumer_prints_no_empty_outbox_table(fake: FakeAdmin, run: Any) -> None:
    fake.answers["GetStatus"] = GROUPS

    shown = run("status").stdout

    assert "outbox backlog: none here (a relay reports the outboxes it drains)" in shown
    assert "oldest age" not in shown
    fake.answers["GetStatus"] = admin_pb2.GetStatusResponse(
        redis=admin_pb2.RedisStatus(up=False),
        outboxes=[admin_pb2.OutboxStatus(schema="signup", backlog=3)],
    )
    relay = run("status").stdout
    assert "outbox backlog" in relay and "signup" in relay
    assert "consumer groups: not known while Redis is down" in relay
    assert "lag entries" not in relay


def test_trace_without_an_outbox_row_names_the_schemas_and_who_to_ask(
    fake: FakeAdmin, run: Any
) -> None:
    fake.answers["TraceEvent"] = admin_pb2.TraceEventResponse(
        ledger=[admin_pb2.LedgerRecord(schema="mailer", group="mailer", result="success")],
        schemas=["mailer"],
    )

    result = run("trace", "0b8f6c1e-53a4-4b9e-9a57-1d1b0c7f3a11", COLUMNS="80")

    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert "outbox: no row in schema mailer (written in another schema" in said
    assert "the outbox is the producer's schema, which its relay drains" in said
    assert "ask the relay with --target its --grpc-addr" in said
