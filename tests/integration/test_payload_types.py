"""GetDeadLetter shows a payload as JSON when its type is known to the serving process, including
types it only knows from a descriptor set built with `buf build`; otherwise base64 and type URL."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from conveyor import wire
from tests.integration.conftest import Case
from tests.integration.consumer_support import create_effects, publish
from tests.integration.test_ops_plane import port_of
from tests.processes import run_conveyor, start_conveyor, stop, wait_until

pytestmark = pytest.mark.slow

INVOICE_PROTO = """syntax = "proto3";

package acme.billing.v1;

import "google/protobuf/timestamp.proto";

message InvoicePaid {
  string invoice_id = 1;
  int64 amount_cents = 2;
  google.protobuf.Timestamp paid_at = 3;
}
"""


@pytest.fixture(scope="module")
def invoice_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A descriptor set with acme.billing.v1.InvoicePaid, built by `buf build`."""
    module = tmp_path_factory.mktemp("protos")
    (module / "acme/billing/v1").mkdir(parents=True)
    (module / "acme/billing/v1/invoice.proto").write_text(INVOICE_PROTO)
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        pytest.fail("the buf CLI is needed (pip install buf-bin; it is a dev dependency)")
    out = module / "billing.binpb"
    subprocess.run([buf, "build", str(module), "-o", str(out)], check=True, capture_output=True)
    return out


def invoice_class(descriptor_set: Path) -> type[Message]:
    """InvoicePaid from the set, in a pool of its own: the test process registers nothing."""
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("acme.billing.v1.InvoicePaid")
    )


async def test_a_descriptor_set_decodes_payloads_the_process_has_no_code_for(
    case: Case, invoice_types: Path
) -> None:
    invoice = invoice_class(invoice_types)(invoice_id="inv-42", amount_cents=1999)
    await create_effects(case.pg, case.schema)
    env = case.env | {"TEST_EFFECTS_SCHEMA": case.schema}
    consumer = start_conveyor(
        [
            "consume",
            "--group",
            "g",
            "--router",
            "tests.integration.effects_router:router",
            "--ledger-schema",
            case.schema,
            "--allow-unauthenticated",
            "--descriptor-set",
            str(invoice_types),
        ],
        env,
    )
    relay = start_conveyor(["relay", "--allow-unauthenticated"], env)  # no descriptor set
    try:
        with_set, without_set = port_of(consumer, []), port_of(relay, [])
        (event_id,) = await publish(case.redis, case.prefix, 1, make=lambda i: invoice)
        dlq = wire.Keys("identity", case.prefix).dlq

        async def dead_lettered() -> bool:
            return bool(await case.redis.xlen(dlq))

        await wait_until(dead_lettered, what="the unknown type dead-lettered")
        entry_id = (await case.redis.xrange(dlq))[0][0].decode()

        def inspect(port: int) -> dict[str, str]:
            done = run_conveyor(
                [
                    "dlq",
                    "inspect",
                    "--stream",
                    "identity",
                    "--id",
                    entry_id,
                    "--json",
                    "--target",
                    f"127.0.0.1:{port}",
                ],
                env,
            )
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)  # type: ignore[no-any-return]

        shown = inspect(with_set)
        assert shown["dead_letter"]["reason"] == "DEAD_LETTER_REASON_UNKNOWN_TYPE"
        assert shown["dead_letter"]["event_id"] == event_id
        assert json.loads(shown["payload_json"]) == {"invoice_id": "inv-42", "amount_cents": "1999"}

        raw = inspect(without_set)
        assert raw.get("payload_json", "") == ""
        assert raw["payload_type_url"] == "type.googleapis.com/acme.billing.v1.InvoicePaid"
        assert invoice.FromString(base64.b64decode(raw["payload"])) == invoice
    finally:
        stop(consumer)
        stop(relay)


def test_a_bad_descriptor_set_refuses_to_start(case: Case, tmp_path: Path) -> None:
    not_a_set = tmp_path / "types.binpb"
    not_a_set.write_text("syntax = 'proto3';\n")
    for path, message in (
        (not_a_set, "is not a binary FileDescriptorSet"),
        (tmp_path / "missing.binpb", "cannot read descriptor set"),
    ):
        done = run_conveyor(
            ["relay", "--allow-unauthenticated", "--descriptor-set", str(path)],
            case.env,
            timeout=60,
        )
        assert done.returncode == 2, (path, done.stderr)
        assert message in done.stderr, done.stderr
