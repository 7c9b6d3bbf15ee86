"""Descriptor sets given with --descriptor-set: what loads, which definition of a type wins, and
what is refused with a reason."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2, descriptor_pb2, timestamp_pb2

from admin.ops.payloads import PayloadTypes
from conveyor.v1 import event_pb2


def _file(
    name: str, package: str, message: str, *, fields: int = 1, deps: tuple[str, ...] = ()
) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    proto.dependency.extend(deps)
    msg = proto.message_type.add(name=message)
    for number in range(1, fields + 1):
        msg.field.add(
            name=f"f{number}",
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    return proto


def _write(path: Path, *files: descriptor_pb2.FileDescriptorProto) -> Path:
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    return path


def test_a_loaded_type_decodes_to_json(tmp_path: Path) -> None:
    types = PayloadTypes.load([_write(tmp_path / "a.binpb", _file("x/a.proto", "x.v1", "Thing"))])
    cls = types.message_class("x.v1.Thing")
    assert cls is not None
    event = event_pb2.Event(type="x.v1.Thing")
    event.data.CopyFrom(
        any_pb2.Any(
            type_url="type.googleapis.com/x.v1.Thing", value=cls(f1="hello").SerializeToString()
        )
    )
    assert '"f1": "hello"' in types.to_json(event)
    assert types.to_json(event_pb2.Event(type="x.v1.Unknown")) == ""


def test_the_same_file_twice_is_fine_but_two_versions_are_refused(tmp_path: Path) -> None:
    one = _write(tmp_path / "one.binpb", _file("x/a.proto", "x.v1", "Thing"))
    same = _write(tmp_path / "same.binpb", _file("x/a.proto", "x.v1", "Thing"))
    PayloadTypes.load([one, same])
    other = _write(tmp_path / "other.binpb", _file("x/a.proto", "x.v1", "Thing", fields=2))
    with pytest.raises(ValueError, match=r"defines x/a\.proto differently"):
        PayloadTypes.load([one, other])


def test_a_set_without_its_imports_is_refused_naming_the_fix(tmp_path: Path) -> None:
    lonely = _write(
        tmp_path / "b.binpb", _file("x/b.proto", "x.v1", "Other", deps=("x/missing.proto",))
    )
    with pytest.raises(ValueError, match="with its imports"):
        PayloadTypes.load([lonely])


def test_an_empty_or_garbage_file_is_not_a_descriptor_set(tmp_path: Path) -> None:
    for content in (b"", b"\xff\xfe not protobuf"):
        path = tmp_path / "bad.binpb"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a binary FileDescriptorSet"):
            PayloadTypes.load([path])


def test_a_payload_that_cannot_become_json_is_shown_as_bytes_not_an_error(tmp_path: Path) -> None:
    """A Timestamp out of JSON's range: the conversion fails, so no JSON (the caller shows the
    payload as base64); the call itself must not fail."""
    stamp = descriptor_pb2.FileDescriptorProto(
        name="x/t.proto",
        package="x.v1",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    msg = stamp.message_type.add(name="Stamped")
    msg.field.add(
        name="at",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    wkt = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(wkt)
    types = PayloadTypes.load([_write(tmp_path / "t.binpb", wkt, stamp)])
    cls = types.message_class("x.v1.Stamped")
    assert cls is not None
    bad = cls()
    bad.at.seconds = 10**12  # far past year 9999
    event = event_pb2.Event(type="x.v1.Stamped")
    event.data.value = bad.SerializeToString()
    assert types.to_json(event) == ""
    good = cls()
    good.at.seconds = 0
    event.data.value = good.SerializeToString()
    assert json.loads(types.to_json(event)) == {"at": "1970-01-01T00:00:00Z"}


def test_a_process_that_imports_no_event_module_shows_bundled_payloads_as_json() -> None:
    """A relay imports no handler module: the bundled `conveyor.identity.v1` types still become
    JSON, in a fresh interpreter where nothing else registered them."""
    from conveyor.identity.v1 import events_pb2  # noqa: PLC0415 - only this test needs it

    data = events_pb2.UserRegistered(user_id="u1", email="a@example.com").SerializeToString()
    probe = (
        "import sys\n"
        "from conveyor.v1 import event_pb2\n"
        "from admin.ops.payloads import PayloadTypes\n"
        "event = event_pb2.Event(type='conveyor.identity.v1.UserRegistered')\n"
        f"event.data.value = bytes.fromhex({data.hex()!r})\n"
        "print(PayloadTypes.load([]).to_json(event))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"user_id": "u1", "email": "a@example.com"}


def _registered_with_team(tmp_path: Path) -> Path:
    """A team's fork of the bundled conveyor.identity.v1.UserRegistered with a field added."""
    proto = _file("team/identity.proto", "conveyor.identity.v1", "UserRegistered", fields=0)
    for name, number in (("user_id", 1), ("team", 9)):
        proto.message_type[0].field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    return _write(tmp_path / "team.binpb", proto)


def test_a_descriptor_set_redefining_a_bundled_type_decodes_it_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The set the operator named is the schema the producer encodes with: its definition wins
    over the bundled one, which would drop the added field, and start-up logs the takeover."""
    path = _registered_with_team(tmp_path)

    with caplog.at_level(logging.WARNING, logger="admin.ops.payloads"):
        types = PayloadTypes.load([path])

    event = event_pb2.Event(type="conveyor.identity.v1.UserRegistered")
    event.data.value = b"\x0a\x02u1" + b"\x4a\x04blue"  # user_id "u1", team "blue"
    assert json.loads(types.to_json(event)) == {"user_id": "u1", "team": "blue"}
    (line,) = caplog.messages
    assert f"descriptor set {str(path)!r} redefines conveyor.identity.v1.UserRegistered" in line
    assert "conveyor/identity/v1/events.proto" in line
    other = event_pb2.Event(type="conveyor.identity.v1.UserDeleted")  # not in the set: bundled
    other.data.value = b"\x0a\x02u1"
    assert json.loads(types.to_json(other)) == {"user_id": "u1"}


def test_a_descriptor_set_carrying_the_bundled_file_unchanged_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conveyor.identity.v1 import events_pb2  # noqa: PLC0415 - only this test needs it

    wkt, bundled = descriptor_pb2.FileDescriptorProto(), descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(wkt)
    events_pb2.DESCRIPTOR.CopyToProto(bundled)
    path = _write(tmp_path / "bundled.binpb", wkt, bundled)  # as `buf build` of the events

    with caplog.at_level(logging.WARNING, logger="admin.ops.payloads"):
        types = PayloadTypes.load([path])

    assert caplog.messages == []
    event = event_pb2.Event(type="conveyor.identity.v1.UserRegistered")
    event.data.value = events_pb2.UserRegistered(user_id="u1").SerializeToString()
    assert json.loads(types.to_json(event)) == {"user_id": "u1"}
