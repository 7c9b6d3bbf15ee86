"""The producing side: every change to a user commits together with the event announcing it."""

from __future__ import annotations

import uuid

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from relay import enqueue
from signup.v1 import events_pb2


async def register(conn: asyncpg.Connection, email: str) -> uuid.UUID:
    """Create a user and publish UserSignedUp, both or neither; return the event's id."""
    user_id = uuid.uuid4()
    async with conn.transaction():
        at = await conn.fetchval(
            "INSERT INTO signup.users (id, email) VALUES ($1, $2) RETURNING signed_up_at",
            user_id,
            email,
        )
        signed_up_at = Timestamp()
        signed_up_at.FromDatetime(at)
        return await enqueue(
            conn,
            events_pb2.UserSignedUp(user_id=str(user_id), email=email, signed_up_at=signed_up_at),
            aggregate_type="user",
            aggregate_id=str(user_id),
            topic="signup",
            schema="signup",  # the schema holding the outbox: `conveyor migrate up --schema signup`
        )


async def verify(conn: asyncpg.Connection, email: str) -> uuid.UUID:
    """Mark a user's address verified and publish EmailVerified; return the event's id.

    LookupError when no user has `email`."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE signup.users SET verified_at = now() WHERE email = $1"
            " RETURNING id, verified_at",
            email,
        )
        if row is None:
            raise LookupError(f"no user signed up with {email!r}")
        verified_at = Timestamp()
        verified_at.FromDatetime(row["verified_at"])
        return await enqueue(
            conn,
            events_pb2.EmailVerified(user_id=str(row["id"]), email=email, verified_at=verified_at),
            aggregate_type="user",
            aggregate_id=str(row["id"]),
            topic="signup",
            schema="signup",
        )
