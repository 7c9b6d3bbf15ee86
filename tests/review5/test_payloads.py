"""Payload types a relay shows as JSON: a --descriptor-set that conflicts with the bundled
conveyor.identity.v1 types."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import any_pb2, descriptor_pb2

from admin.ops.payloads import PayloadTypes
from conveyor.v1 import event_pb2

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL


# A descriptor set given with --descriptor-set that defines conveyor.identity.v1.UserRegistered
# otherwise than the bundled one (a team that forked the example types and added a field) loads
# without a word, and then the bundled definition silently wins: `dlq inspect` shows the payload
# decoded by a schema the operator did not give, dropping the field they added (it shows as
# nothing at all). Expected: either the start is refused naming the conflicting type (as two
# descriptor sets that define one file differently are), or the given definition is used.
def test_a_descriptor_set_redefining_a_bundled_type_is_not_silently_ignored(
    tmp_path: Path,
) -> None:
    proto = descriptor_pb2.FileDescriptorProto(
        name="team/identity.proto", package="conveyor.identity.v1", syntax="proto3"
    )
    msg = proto.message_type.add(name="UserRegistered")
    msg.field.add(name="user_id", number=1, type=_STRING, label=_OPTIONAL)
    msg.field.add(name="team", number=9, type=_STRING, label=_OPTIONAL)
    path = tmp_path / "team.binpb"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString())
    try:
        types = PayloadTypes.load([path])
    except ValueError as exc:
        assert "conveyor.identity.v1.UserRegistered" in str(exc)
        return
    # user_id = "u1" (field 1), team = "blue" (field 9), as the team's producer encodes them.
    payload = b"\x0a\x02u1" + b"\x4a\x04blue"
    event = event_pb2.Event(
        type="conveyor.identity.v1.UserRegistered",
        data=any_pb2.Any(type_url="type.googleapis.com/conveyor.identity.v1.UserRegistered"),
    )
    event.data.value = payload
    shown = json.loads(types.to_json(event))
    assert shown.get("team") == "blue", shown
