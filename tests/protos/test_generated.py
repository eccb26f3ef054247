"""The committed stubs are current, and the protos match the public V2 definition
field for field (checked against tritonclient's compiled descriptors, in a
separate process because the two cannot share one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kairos.protos import grpc_service_pb2, model_config_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_protos(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True, capture_output=True,
    )
    for fresh in sorted(tmp_path.glob("*_pb2*.py*")):
        committed = ROOT / "protos" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run `python scripts/gen_protos.py`"
        )


DUMP = """
import json, sys
from google.protobuf.descriptor import FieldDescriptor
def fields(message):
    out = {}
    def walk(d, prefix):
        for f in d.fields:
            kind = f.message_type.full_name if f.message_type else (f.enum_type.full_name if f.enum_type else f.type)
            out[prefix + d.name + "." + f.name] = [f.number, str(kind), f.is_repeated]
        for n in d.nested_types:
            walk(n, prefix + d.name + ".")
    walk(message, "")
    return out
module = sys.argv[1]
if module == "triton":
    from tritonclient.grpc import model_config_pb2 as mc, service_pb2 as svc
else:
    from kairos.protos import model_config_pb2 as mc, grpc_service_pb2 as svc
result = {}
for file in (mc, svc):
    for message in file.DESCRIPTOR.message_types_by_name.values():
        result.update(fields(message))
methods = {m.name: [m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming]
           for m in svc.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
print(json.dumps({"fields": result, "methods": methods, "enums": {
    v.name: v.number for v in mc.DESCRIPTOR.enum_types_by_name["DataType"].values}}))
"""


def _descriptors(which: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", DUMP, which], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def test_every_field_matches_the_public_definition():
    ours, public = _descriptors("kairos"), _descriptors("triton")
    mismatched = {
        name: (value, public["fields"].get(name))
        for name, value in ours["fields"].items()
        if public["fields"].get(name) != value and not name.endswith("Entry.key")
    }
    assert not mismatched, mismatched
    assert ours["enums"] == public["enums"]
    for method, signature in ours["methods"].items():
        assert public["methods"][method] == signature, method
    assert len(ours["fields"]) > 150  # the check really covered the protocol


def test_service_and_package_names():
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert model_config_pb2.DESCRIPTOR.package == "inference"
