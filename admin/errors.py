"""Errors raised by the admin package: migrations, catalog and the ops plane."""

from __future__ import annotations

from collections.abc import Sequence


class AdminError(Exception):
    """Base of every error the admin package raises on purpose.

    `message` is the one line a CLI prints; subclasses add the structured fields it was made from.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AdminError, ValueError):
    """A value the caller gave (schema name, revision, URL) is not acceptable; nothing changed."""

    def __init__(self, message: str, *, field: str, value: str) -> None:
        super().__init__(message)
        self.field = field
        """Which input was wrong, e.g. `schema` or `revision`."""
        self.value = value


class DatabaseUnavailable(AdminError):
    """PostgreSQL could not be reached or refused the connection."""

    def __init__(self, *, url: str, cause: BaseException) -> None:
        super().__init__(f"cannot connect to PostgreSQL at {url}: {cause}")
        self.url = url
        """The database URL with its password masked."""


class MigrationFailed(AdminError):
    """A migration step failed in the database; its transaction was rolled back."""

    def __init__(self, *, schema: str, revision: str, cause: BaseException) -> None:
        super().__init__(f"migrating schema {schema!r} to {revision!r} failed: {cause}")
        self.schema = schema
        self.revision = revision


class SchemaNotReady(AdminError):
    """A schema is not at the revision this version of Conveyor expects."""

    def __init__(self, *, schema: str, current: str | None, head: str, command: str | None) -> None:
        if current is None:
            where = f"schema {schema!r} has no Conveyor tables"
        else:
            where = f"schema {schema!r} is at revision {current!r}, head is {head!r}"
        if command is None:
            remedy = "the database was migrated by a newer Conveyor; run that version"
        else:
            remedy = f"run `{command}`"
        super().__init__(f"{where}: {remedy}")
        self.schema = schema
        self.current = current
        """The revision recorded in the schema's version table; None when never migrated."""
        self.head = head
        self.command = command
        """The command that brings the schema to head; None when the revision is unknown here."""


class NotFound(AdminError):
    """What the caller named does not exist (a dead letter, an event)."""

    def __init__(self, message: str, *, kind: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.kind = kind
        """What was looked for, e.g. `dead letter`."""
        self.ids = tuple(ids)


class FailedPrecondition(AdminError):
    """The request is well-formed but the state does not allow it (e.g. reprocess a resolved
    dead letter); nothing was changed."""

    def __init__(self, message: str, *, ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.ids = tuple(ids)


class OpsPlaneUnavailable(AdminError):
    """The ops plane of a process could not start (its gRPC port, or PostgreSQL)."""


class AddressUnavailable(OpsPlaneUnavailable):
    """A process cannot listen on its gRPC address: another process holds it, or the host has no
    such address."""

    def __init__(self, *, address: str, reason: str, in_use: bool) -> None:
        super().__init__(f"cannot listen on {address} ({reason})")
        self.address = address
        self.reason = reason
        """The system's word for it, e.g. `address already in use`."""
        self.in_use = in_use
        """Whether another process holds the address (rather than the host lacking it)."""


class DependencyUnavailable(AdminError):
    """PostgreSQL or Redis did not answer at start within the startup timeout, or answered with an
    error no wait can fix (a wrong password, a database that does not exist); nothing was
    created."""

    def __init__(
        self, *, name: str, address: str, cause: BaseException, waited: float | None
    ) -> None:
        error = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        if waited is None:
            what = "answered with an error"
        elif waited > 0:
            what = f"did not answer within {waited:g} s"
        else:
            what = "did not answer"
        super().__init__(f"{name} at {address} {what} ({error})")
        self.name = name
        """`PostgreSQL` or `Redis`."""
        self.address = address
        """Its URL with any password masked."""
        self.waited = waited
        """Seconds waited before giving up; None when the answer was an error not worth waiting
        out."""
