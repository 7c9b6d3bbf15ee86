"""Payload message types for showing dead letters as JSON: the bundled ones, the process's own,
and descriptor sets.

Every process knows the event types bundled with Conveyor (`conveyor.identity.v1`). A consumer
knows its handlers' event types too; a relay, or a consumer inspecting another group's dead
letters, may not. `--descriptor-set` names FileDescriptorSets built with `buf build -o FILE`
(binary, imports included, which is buf's default) so their types decode too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    symbol_database,
)
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from conveyor.identity.v1 import events_pb2 as identity_events
from conveyor.v1 import event_pb2

log = logging.getLogger(__name__)

BUNDLED = (identity_events.DESCRIPTOR,)
"""The files of event types shipped with Conveyor: importing them registers their messages in
protobuf's default pool, where `PayloadTypes.message_class` finds them in every process."""


class PayloadTypes:
    """Finds the message class of an event type: in the descriptor sets loaded at start, else
    bundled or registered in this process.

    A type the descriptor sets define is decoded by their definition even when this process
    knows another one (a bundled type redefined with an added field): the operator named the
    set, and it is the schema the producer encodes with. Start-up logs each such type.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool

    @classmethod
    def load(cls, paths: Sequence[Path]) -> PayloadTypes:
        """Read FileDescriptorSets; ValueError naming the file and the problem."""
        if not paths:
            return cls()
        pool = descriptor_pool.DescriptorPool()
        added: dict[str, bytes] = {}
        for path in paths:
            for file in _read_set(path):
                serialized = file.SerializeToString(deterministic=True)
                if file.name in added:
                    if added[file.name] != serialized:
                        raise ValueError(
                            f"descriptor set {str(path)!r} defines {file.name} differently "
                            "from an earlier set: give each file once"
                        )
                    continue
                try:
                    pool.Add(file)
                except TypeError as exc:  # a missing import or a conflicting symbol
                    raise ValueError(
                        f"descriptor set {str(path)!r}: {file.name}: {exc} (build it with its "
                        "imports, which `buf build` includes by default)"
                    ) from None
                added[file.name] = serialized
                _log_redefined(path, pool.FindFileByName(file.name).message_types_by_name)
        return cls(pool)

    def message_class(self, full_name: str) -> type[Message] | None:
        """The class of message type `full_name`, or None when it is unknown here."""
        if self._pool is not None:
            try:
                return message_factory.GetMessageClass(self._pool.FindMessageTypeByName(full_name))
            except KeyError:
                pass
        try:
            return symbol_database.Default().GetSymbol(full_name)
        except KeyError:
            return None

    def to_json(self, event: event_pb2.Event) -> str:
        """The event's payload as JSON when its type is known and it converts, else "" (the
        caller then shows the bytes): a dead letter's payload may be anything."""
        cls = self.message_class(event.type)
        if cls is None:
            return ""
        # Any fields resolve among the types of the pool the payload's type came from.
        pool = None if cls.DESCRIPTOR.file.pool is descriptor_pool.Default() else self._pool
        try:
            message = cls.FromString(event.data.value)
            return json_format.MessageToJson(
                message, preserving_proto_field_name=True, descriptor_pool=pool
            )
        except (DecodeError, json_format.Error, TypeError, ValueError):
            return ""


def _read_set(path: Path) -> Sequence[descriptor_pb2.FileDescriptorProto]:
    """The files of the FileDescriptorSet at `path`; ValueError when it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(
            f"cannot read descriptor set {str(path)!r}: {exc.strerror or exc}"
        ) from None
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    except DecodeError:
        files = None
    if not files:
        raise ValueError(
            f"{str(path)!r} is not a binary FileDescriptorSet: build one with "
            f"`buf build -o {path.name if path.suffix == '.binpb' else 'types.binpb'}`"
        )
    return files


def _log_redefined(path: Path, messages: Mapping[str, Descriptor]) -> None:
    """Log each message type (nested ones too) that this process knows otherwise: the
    descriptor set's definition is the one used for it from now on."""
    known = descriptor_pool.Default()
    for message in messages.values():
        _log_redefined(path, message.nested_types_by_name)
        try:
            own = known.FindMessageTypeByName(message.full_name)
        except KeyError:
            continue
        if _proto(own) != _proto(message):
            log.warning(
                "descriptor set %r redefines %s (this process has it from %s): payloads of "
                "that type are shown with the descriptor set's definition",
                str(path),
                message.full_name,
                own.file.name,
            )


def _proto(message: Descriptor) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    return proto
