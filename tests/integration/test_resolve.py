"""ResolveDeadLetters through the AdminService servicer: its reply, its error and its audit row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from admin.catalog import Catalog
from admin.ops.servicer import AdminContext, AdminServicer
from admin.ops.status import Snapshot
from conveyor import wire
from conveyor.v1 import admin_pb2
from tests.integration.catalog_support import (
    add,
    fixture_catalog_url,  # noqa: F401 - a pytest fixture
    new_entry_id,
)

TOPIC = "orders"


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class _Context:
    """The part of a grpc.aio servicer context the servicer uses for a unary call."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def _no_status() -> Snapshot:
    raise AssertionError("status is not asked for here")


@pytest.fixture
async def pool(catalog_url: str, key_prefix: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(catalog_url, min_size=1, max_size=3)
    try:
        yield p
    finally:
        await p.execute("DELETE FROM conveyor.audit WHERE key_prefix = $1", key_prefix)
        await p.close()


@pytest.fixture
def servicer(pool: asyncpg.Pool, key_prefix: str, redis_client: Any) -> AdminServicer:
    context = AdminContext(
        catalog=Catalog(pool, key_prefix),
        redis=redis_client,
        token_key=b"k" * 32,
        snapshot=_no_status,
        metrics=None,
    )
    return AdminServicer(context)


async def _add(pool: asyncpg.Pool, prefix: str) -> str:
    entry_id = new_entry_id()
    await add(pool, TOPIC, dlq_stream=wire.Keys(TOPIC, prefix).dlq, dlq_entry_id=entry_id)
    return entry_id


async def _resolve_audits(pool: asyncpg.Pool, prefix: str) -> list[Any]:
    return await pool.fetch(
        "SELECT target_ids, reason, outcome FROM conveyor.audit "
        "WHERE key_prefix = $1 AND action = 'resolve' ORDER BY id",
        prefix,
    )


async def test_resolve_audits_the_entry_ids_as_requested(
    pool: asyncpg.Pool, servicer: AdminServicer, key_prefix: str, catalog_cleanup: None
) -> None:
    """The audit row of a resolve names the request's entry ids in the order they were asked
    for, whatever order the catalog keeps them in."""
    older, newer = await _add(pool, key_prefix), await _add(pool, key_prefix)
    request = admin_pb2.ResolveDeadLettersRequest(
        topic=TOPIC, entry_ids=[newer, older], reason="fixed upstream"
    )
    reply = await servicer.ResolveDeadLetters(request, _Context())
    assert reply.resolved == 2
    audits = await _resolve_audits(pool, key_prefix)
    assert [tuple(a) for a in audits] == [([newer, older], "fixed upstream", "resolved 2")]


async def test_resolving_unknown_ids_names_them_in_request_order_and_changes_nothing(
    pool: asyncpg.Pool, servicer: AdminServicer, key_prefix: str, catalog_cleanup: None
) -> None:
    """NotFound names the missing ids once each, in the order asked for (not sorted), so the
    caller can match them to its request; the known dead letter stays open, nothing is audited."""
    known = await _add(pool, key_prefix)
    late, early = "9-0", "3-0"  # no dead letters of this test's fresh key prefix
    request = admin_pb2.ResolveDeadLettersRequest(
        topic=TOPIC, entry_ids=[late, known, early, late], reason="fixed upstream"
    )
    with pytest.raises(_Aborted) as aborted:
        await servicer.ResolveDeadLetters(request, _Context())
    assert aborted.value.code == grpc.StatusCode.NOT_FOUND
    assert aborted.value.details == (
        f"no dead letters {late}, {early} on topic {TOPIC} of this deployment "
        f"(key prefix {key_prefix})"
    )
    state = await pool.fetchval(
        "SELECT state FROM conveyor.dead_letters WHERE dlq_stream = $1 AND dlq_entry_id = $2",
        wire.Keys(TOPIC, key_prefix).dlq,
        known,
    )
    assert state == "open"
    assert await _resolve_audits(pool, key_prefix) == []
