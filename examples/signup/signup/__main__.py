"""`python -m signup`: the example app's commands: migrate, register, verify, mail, clean.

Each connects to CONVEYOR_DATABASE_URL (the variable the `conveyor` commands read), by default
the local PostgreSQL; `clean` also to CONVEYOR_REDIS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from importlib import resources

import asyncpg
from redis.exceptions import RedisError

from signup import cleanup, produce

DATABASE_URL = os.environ.get(
    "CONVEYOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def migrate(conn: asyncpg.Connection) -> str:
    """Create the app's tables when missing (signup/schema.sql)."""
    await conn.execute(resources.files("signup").joinpath("schema.sql").read_text())
    return "tables signup.users and mailer.mail are in place"


async def register(conn: asyncpg.Connection, email: str) -> str:
    event_id = await produce.register(conn, email)
    return f"signed up {email}: event {event_id}"


async def verify(conn: asyncpg.Connection, email: str) -> str:
    event_id = await produce.verify(conn, email)
    return f"verified {email}: event {event_id}"


async def mail(conn: asyncpg.Connection, address: str, kind: str | None, wait: float) -> str:
    """The mail queued for `address` (of `kind`), waiting up to `wait` seconds for some."""
    query = (
        "SELECT kind, queued_at FROM mailer.mail"
        " WHERE address = $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id"
    )
    deadline = asyncio.get_running_loop().time() + wait
    while not (rows := await conn.fetch(query, address, kind)):
        if asyncio.get_running_loop().time() >= deadline:
            what = f"{kind} mail" if kind else "mail"
            raise LookupError(
                f"no {what} for {address} after {wait:g} s: is `conveyor consume` running (see "
                "consume.log)? A rejected or failed event is in `conveyor dlq list` instead"
            )
        await asyncio.sleep(0.2)
    return "\n".join(
        f"{r['kind']} mail to {address}, queued {r['queued_at']:%H:%M:%S}" for r in rows
    )


class MalformedUrl(Exception):
    """CONVEYOR_DATABASE_URL is not a PostgreSQL URL asyncpg can use."""


def _seconds(text: str) -> float:
    """A --wait value: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m signup", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="create the app's tables (idempotent)")
    for name, verb in (("register", "sign up"), ("verify", "verify the address of")):
        command = commands.add_parser(name, help=f"{verb} a user and publish the event")
        command.add_argument("email")
    command = commands.add_parser("mail", help="show the mail queued for an address")
    command.add_argument("address")
    command.add_argument("--kind", choices=("welcome", "verified"), help="wait for this kind")
    command.add_argument("--wait", type=_seconds, default=30.0, help="seconds to wait (default 30)")
    commands.add_parser(
        "clean", help="drop the app's tables, its catalog rows and Redis keys (idempotent)"
    )
    return parser


async def _run(args: argparse.Namespace) -> str:
    try:
        conn = await asyncpg.connect(DATABASE_URL)
    except ValueError as exc:  # a malformed URL: asyncpg's ClientConfigurationError is one too
        raise MalformedUrl(f"CONVEYOR_DATABASE_URL {_shown(DATABASE_URL)}: {exc}") from None
    try:
        if args.command == "migrate":
            return await migrate(conn)
        if args.command == "clean":
            return await cleanup.clean(conn)
        if args.command == "mail":
            return await mail(conn, args.address, args.kind, args.wait)
        return await (register if args.command == "register" else verify)(conn, args.email)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors are one line on stderr and exit status 1."""
    args = _parser().parse_args(argv)
    try:
        print(asyncio.run(_run(args)))
    except asyncpg.UndefinedTableError as exc:
        print(
            f"signup: {exc}: run `conveyor migrate up --schema signup`, `conveyor migrate up "
            "--schema mailer` and `python -m signup migrate` first",
            file=sys.stderr,
        )
        return 1
    except asyncpg.UniqueViolationError:
        print(f"signup: {args.email} has signed up already", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"signup: cannot reach PostgreSQL (CONVEYOR_DATABASE_URL): {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"signup: Redis (CONVEYOR_REDIS_URL): {exc}", file=sys.stderr)
        return 1
    except (LookupError, MalformedUrl, asyncpg.PostgresError) as exc:
        print(f"signup: {exc}", file=sys.stderr)
        return 1
    return 0


def _shown(url: str) -> str:
    """`url` without its password, quoted."""
    scheme, _, rest = url.rpartition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return repr(f"{scheme}://{rest}" if scheme else rest)


if __name__ == "__main__":
    sys.exit(main())
