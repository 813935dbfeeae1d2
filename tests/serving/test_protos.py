"""Our hand-written protos are wire-compatible with TF Serving's, and the generated code is fresh.

The official descriptors are read in a subprocess: TensorFlow's protos and ours define the same
message names, so they cannot share one process's descriptor pool (and the server never loads TF's).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor

from serving.proto import apis_pb2, config_pb2, error_codes_pb2, example_pb2, meta_graph_pb2, tensor_pb2

REPO = Path(__file__).resolve().parents[2]

OFFICIAL_MODULES = [
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
    "tensorflow_serving.config.file_system_storage_path_source_pb2",
]

DUMP = """
import importlib, json, sys
from google.protobuf import descriptor_pool
pool = descriptor_pool.Default()
for name in sys.argv[1:]:
    importlib.import_module(name)
def fields(d):
    return {f.name: [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else
             (f.enum_type.full_name if f.enum_type else None)] for f in d.fields}
out = {"messages": {}, "enums": {}, "services": {}}
def walk(d):
    out["messages"][d.full_name] = fields(d)
    for nested in d.nested_types:
        walk(nested)
    for e in d.enum_types:
        out["enums"][e.full_name] = {v.name: v.number for v in e.values}
seen = set()
def visit(fd):
    if fd.name in seen:
        return
    seen.add(fd.name)
    for d in fd.message_types_by_name.values():
        walk(d)
    for e in fd.enum_types_by_name.values():
        out["enums"][e.full_name] = {v.name: v.number for v in e.values}
    for s in fd.services_by_name.values():
        out["services"][s.full_name] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in s.methods}
    for dep in fd.dependencies:
        visit(dep)
for name in sys.argv[1:]:
    visit(importlib.import_module(name).DESCRIPTOR)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def official() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", DUMP, *OFFICIAL_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def official_name(name: str | None) -> str | None:
    """Our copies of TensorFlow's core messages live in `tensorflow_wire` (see protos/.../tensor.proto)."""
    return None if name is None else re.sub(r"^tensorflow_wire\.", "tensorflow.", name)


def _ours() -> tuple[dict[str, Descriptor], dict[str, EnumDescriptor]]:
    messages: dict[str, Descriptor] = {}
    enums: dict[str, EnumDescriptor] = {}

    def walk(d: Descriptor) -> None:
        messages[d.full_name] = d
        for nested in d.nested_types:
            walk(nested)
        for e in d.enum_types:
            enums[e.full_name] = e

    for module in (apis_pb2, config_pb2, error_codes_pb2, example_pb2, meta_graph_pb2, tensor_pb2):
        for d in module.DESCRIPTOR.message_types_by_name.values():
            walk(d)
        for e in module.DESCRIPTOR.enum_types_by_name.values():
            enums[e.full_name] = e
    return messages, enums


# Config messages only ever read as text files (the official ones are not in the pip package).
TEXT_FORMAT_ONLY = {
    "tensorflow.serving.BatchingParameters",
    "tensorflow.serving.PrometheusConfig",
    "tensorflow.serving.MonitoringConfig",
    "tensorflow.serving.SSLConfig",
}


def test_every_field_matches_the_official_number_and_type(official: dict) -> None:
    messages, _ = _ours()
    checked = 0
    for name, descriptor in messages.items():
        if name in TEXT_FORMAT_ONLY or name.endswith("Entry"):
            continue
        assert official_name(name) in official["messages"], f"{name} does not exist in TF Serving's API"
        theirs = official["messages"][official_name(name)]
        for field in descriptor.fields:
            assert field.name in theirs, f"{name}.{field.name} is not an official field"
            number, kind, repeated, type_name = theirs[field.name]
            ours_type = (
                field.message_type.full_name
                if field.message_type
                else (field.enum_type.full_name if field.enum_type else None)
            )
            assert (field.number, field.type, field.is_repeated) == (number, kind, repeated), (
                f"{name}.{field.name}"
            )
            assert official_name(ours_type) == type_name, f"{name}.{field.name}: {ours_type} != {type_name}"
            checked += 1
    assert checked > 80


def test_enums_match(official: dict) -> None:
    _, enums = _ours()
    for name, enum in enums.items():
        theirs = official["enums"][official_name(name)]
        for value in enum.values:
            assert theirs[value.name] == value.number, f"{name}.{value.name}"


def test_services_match(official: dict) -> None:
    for service in apis_pb2.DESCRIPTOR.services_by_name.values():
        theirs = official["services"][service.full_name]
        for method in service.methods:
            assert theirs[method.name] == [
                official_name(method.input_type.full_name),
                official_name(method.output_type.full_name),
            ]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    sources = sorted((REPO / "protos/serving/proto").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, sources),
        ],
        check=True,
    )
    generated = tmp_path / "serving/proto"
    for file in sorted(generated.iterdir()):
        committed = REPO / "serving/proto" / file.name
        if file.name.endswith("_pb2_grpc.py") and file.name != "apis_pb2_grpc.py":
            continue
        assert committed.exists(), f"{file.name} is missing: run `make protos`"
        assert committed.read_text() == file.read_text(), f"{file.name} is stale: run `make protos`"
    shutil.rmtree(tmp_path / "serving")
