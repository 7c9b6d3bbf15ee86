"""The mailer group's handlers (`conveyor consume --router signup.handlers:router`)."""

from __future__ import annotations

from consumers import EventContext, Reject, Router
from signup.v1 import events_pb2

router = Router()


@router.handler(events_pb2.UserSignedUp, topic="signup")
async def welcome(event: events_pb2.UserSignedUp, ctx: EventContext) -> None:
    if "@" not in event.email:
        raise Reject(f"cannot mail {event.email!r}: not an email address")  # a dead letter now
    # ctx.db is the transaction that also records the event in the group's ledger:
    # the mail is queued once however often the event is delivered.
    await ctx.db.execute(
        "INSERT INTO mailer.mail (user_id, address, kind) VALUES ($1, $2, 'welcome')",
        event.user_id,
        event.email,
    )


@router.handler(events_pb2.EmailVerified, topic="signup")
async def confirm(event: events_pb2.EmailVerified, ctx: EventContext) -> None:
    await ctx.db.execute(
        "INSERT INTO mailer.mail (user_id, address, kind) VALUES ($1, $2, 'verified')",
        event.user_id,
        event.email,
    )
