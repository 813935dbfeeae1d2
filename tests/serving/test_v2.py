"""The Open Inference Protocol (KServe V2) over a real server process, called by `tritonclient`.

tritonclient needs protobuf < 7 and this project's env has protobuf 7, so it gets a venv of its own,
`.venv-tritonclient/` (git-ignored), made here on first use from the package registry: tritonclient,
protobuf 6, python-rapidjson and ml-dtypes go in it, and a `.pth` line puts the project env's
site-packages after them for the rest (numpy, grpcio, geventhttpclient), so it installs in seconds.
The calls run in one subprocess (`v2_tritonclient_calls.py`) per module, against one server;
the answers are compared with TF Serving's API on the same inputs. The tests are skipped only when
the registry cannot be reached. Pure pieces (datatypes, raw tensors, top classes) and the REST
binary format are also tested here without tritonclient. The classification extension is compared
with TF Serving's `:classify` on the same examples; `tagged`, a bare ONNX graph (no manifest, no
labels) passing its inputs through, gives it an unlabelled output with ties and a BYTES output.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper
from PIL import Image

from serving import codec
from serving.backends import Signature, TensorMeta
from serving.errors import InvalidArgument
from serving.proto import inference_pb2, inference_pb2_grpc
from serving.protocol.v2 import common
from tests.clients.tiny_models import write_tiny_catdog, write_tiny_sentiment
from tests.serving.fixtures import REPO_ROOT, ServerProcess, start_server, write_config, write_tiny_version

pytestmark = pytest.mark.slow

TRITON_VENV = REPO_ROOT / ".venv-tritonclient"
TRITON_PACKAGES = ("tritonclient>=2.50,<3", "protobuf>=6.30,<7", "python-rapidjson>=0.9.1,<2", "ml-dtypes>=0.4,<=0.5.4")
SCRIPT = Path(__file__).with_name("v2_tritonclient_calls.py")
_OFFLINE_MARKERS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                    "Connection refused", "ConnectTimeout", "ReadTimeout", "Max retries exceeded")

# The spec's messages (kserve/open-inference-protocol, open_inference_grpc.proto): field -> number.
SPEC_FIELDS = {
    "ServerLiveResponse": {"live": 1},
    "ServerReadyResponse": {"ready": 1},
    "ModelReadyRequest": {"name": 1, "version": 2},
    "ModelReadyResponse": {"ready": 1},
    "ServerMetadataResponse": {"name": 1, "version": 2, "extensions": 3},
    "ModelMetadataRequest": {"name": 1, "version": 2},
    "ModelMetadataResponse": {"name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5, "properties": 6},
    "ModelMetadataResponse.TensorMetadata": {"name": 1, "datatype": 2, "shape": 3},
    "ModelInferRequest": {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
                          "raw_input_contents": 7},
    "ModelInferRequest.InferInputTensor": {"name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5},
    "ModelInferRequest.InferRequestedOutputTensor": {"name": 1, "parameters": 2},
    "ModelInferResponse": {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
                           "raw_output_contents": 6},
    "ModelInferResponse.InferOutputTensor": {"name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5},
    "InferParameter": {"bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4, "uint64_param": 5},
    "InferTensorContents": {"bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4,
                            "uint64_contents": 5, "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8},
}
SPEC_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


# -- fixtures ----------------------------------------------------------------------------------


def write_tagged(version_dir: Path) -> None:
    """A bare ONNX graph (no manifest: no labels): `scores` FP32 [batch,4] -> `ranked` (the same
    values), `tags` BYTES [batch,3] -> `echoed` (the same strings)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["scores"], ["ranked"]), helper.make_node("Identity", ["tags"], ["echoed"])],
        "tagged",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("tags", TensorProto.STRING, ["batch", 3])],
        [helper.make_tensor_value_info("ranked", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("echoed", TensorProto.STRING, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True)
    onnx.save(model, version_dir / "model.onnx")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v2-models")
    write_tiny_version(root / "digits", 1)
    write_tiny_version(root / "spare" / "digits2", 1, seed=3)  # loaded through the repository API
    write_tiny_catdog(root / "catdog")
    write_tiny_sentiment(root / "sentiment")
    write_tagged(root / "tagged" / "1")
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("v2-server")
    served = ("digits", "catdog", "sentiment", "tagged")
    config = write_config(work / "models.config", {name: models / name for name in served})
    process = start_server(["--model_config_file", str(config)], work / "server.log")
    yield process
    process.stop()


def _triton_python() -> Path:
    """The tritonclient venv's python, made on first use (see the module docstring)."""
    python = TRITON_VENV / "bin" / "python"
    probe = [str(python), "-c", "import tritonclient.grpc, tritonclient.http"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(TRITON_VENV)], check=True)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", *TRITON_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if install.returncode != 0:
        if any(marker in install.stdout + install.stderr for marker in _OFFLINE_MARKERS):
            pytest.skip(f"the package registry is unreachable, so tritonclient cannot be installed: {install.stderr[-300:]}")
        raise AssertionError(f"installing tritonclient failed:\n{install.stdout}\n{install.stderr}")
    (site,) = (TRITON_VENV / "lib").glob("python3*/site-packages")
    main_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "numpy").exists())
    (site / "zz_project_env.pth").write_text(main_site + "\n")  # after the venv's own packages
    subprocess.run(probe, check=True)
    return python


def _png() -> bytes:
    photo = np.zeros((20, 24, 3), dtype=np.uint8)
    photo[..., 0] = 220  # red: the tiny catdog's "cat"
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    return buffer.getvalue()


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    return {
        "digits": rng.uniform(0, 255, (2, 28, 28, 1)).astype(np.float32),
        "catdog": rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32),
        "png": np.frombuffer(_png(), dtype=np.uint8),
        # `tagged`'s scores: a tie (0.75 at 1 and 3) in the first row, integers' worth in the second.
        "scores": np.array([[0.25, 0.75, 0.5, 0.75], [3.0, -1.0, 2.0, 10.0]], np.float32),
    }


@pytest.fixture(scope="module")
def triton(server: ServerProcess, models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python = _triton_python()
    inputs = tmp_path_factory.mktemp("v2-inputs") / "inputs.npz"
    np.savez(inputs, **_inputs())
    result = subprocess.run(
        [str(python), str(SCRIPT), server.grpc_target, f"127.0.0.1:{server.rest_port}", str(inputs),
         str(models / "spare" / "digits2")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"{result.stderr}\n--- server log ---\n{server.log()[-3000:]}"
    return json.loads(result.stdout)


def tf_predict(server: ServerProcess, model: str, body: dict[str, Any], signature: str = "") -> Any:
    if signature:
        body = {**body, "signature_name": signature}
    response = requests.post(f"{server.rest_url}/v1/models/{model}:predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# -- tritonclient ------------------------------------------------------------------------------


def test_health_and_metadata(triton: dict[str, Any]) -> None:
    assert triton["health"]["http"] == [True, True, True, True, False]
    assert triton["health"]["grpc"] == [True, True, True, True]
    for metadata in triton["server_metadata"].values():
        assert metadata["name"] == "model-serving"
        assert set(metadata["extensions"]) == {"binary_tensor_data", "classification", "model_repository"}
    digits = triton["model_metadata"]["digits"]
    assert digits["http"] == {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        "properties": {"signatures": "serving_default", "signature": "serving_default", "version": "1"},
    }
    # gRPC's JSON writes int64 as strings; otherwise the same answer.
    grpc_digits = digits["grpc"]
    explain = triton["model_metadata"]["catdog.predict_image_bytes"]["http"]["properties"]
    assert explain["signature"] == "predict_image_bytes" and "explain" in explain["signatures"].split(",")
    # Triton's proto has no `properties` (the spec's field 6): tritonclient.grpc drops it unseen;
    # the project's V2GrpcClient reads it (tests/clients/test_clients.py).
    assert grpc_digits["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "28", "28", "1"]}]
    assert (grpc_digits["name"], grpc_digits["platform"], grpc_digits["versions"]) == ("digits", "onnxruntime_onnx", ["1"])
    image_bytes = triton["model_metadata"]["catdog.predict_image_bytes"]["http"]
    assert image_bytes["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    assert triton["model_metadata"]["sentiment"]["http"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def test_digits_equal_tf_serving(triton: dict[str, Any], server: ServerProcess) -> None:
    digits = _inputs()["digits"]
    expected = np.array(tf_predict(server, "digits", {"instances": digits.tolist()})["predictions"], dtype=np.float32)
    answers = triton["infer"]
    for case in ("digits_http_binary", "digits_http_json", "digits_grpc", "digits_grpc_version"):
        answer = answers[case]
        assert (answer["model_name"], answer["model_version"]) == ("digits", "1")
        np.testing.assert_array_equal(np.array(answer["outputs"]["probabilities"], dtype=np.float32), expected, case)
    assert answers["digits_http_binary"]["binary"] == [True]
    assert answers["digits_http_json"]["binary"] == [False]
    assert answers["digits_http_binary"]["id"] == "req-1" and answers["digits_grpc"]["id"] == "req-2"


def test_catdog_and_sentiment_equal_tf_serving(triton: dict[str, Any], server: ServerProcess) -> None:
    answers = triton["infer"]
    png = {"b64": __import__("base64").b64encode(_png()).decode()}
    expected = tf_predict(server, "catdog", {"instances": [png]}, "predict_image_bytes")["predictions"]
    for case in ("png_http", "png_grpc", "png_grpc_parameter"):
        np.testing.assert_array_equal(
            np.array(answers[case]["outputs"]["probabilities"], np.float32), np.array(expected, np.float32), case
        )
    assert answers["png_grpc"]["model_name"] == "catdog.predict_image_bytes"
    assert expected[0][0] > 0.9  # red is "cat": the image bytes really were decoded
    catdog = _inputs()["catdog"]
    expected = tf_predict(server, "catdog", {"instances": catdog.tolist()})["predictions"]
    np.testing.assert_array_equal(np.array(answers["catdog_http"]["outputs"]["probabilities"], np.float32),
                                  np.array(expected, np.float32))
    heatmap = tf_predict(server, "catdog", {"instances": catdog.tolist(), "output_filter": ["heatmap"]}, "explain")
    for case in ("heatmap_http_json", "heatmap_grpc"):
        assert list(answers[case]["outputs"]) == ["heatmap"], case  # only the requested output
        np.testing.assert_array_equal(np.array(answers[case]["outputs"]["heatmap"], np.float32),
                                      np.array(heatmap["predictions"], np.float32))
    texts = ["good fun great", "awful dull bad"]
    expected = np.array(tf_predict(server, "sentiment", {"instances": texts})["predictions"], np.float32)
    for case in ("text_http_binary", "text_http_json", "text_grpc"):
        np.testing.assert_array_equal(np.array(answers[case]["outputs"]["probabilities"], np.float32), expected)
    assert expected[0][1] > 0.9 and expected[1][0] > 0.9


@pytest.mark.parametrize(
    ("case", "http_status", "grpc_code", "words"),
    [
        ("unknown_model", "404", "NOT_FOUND", "model 'nope' is not served"),
        ("unknown_signature_name", "404", "NOT_FOUND", "no signature 'nope'"),
        ("unknown_version", "404", "NOT_FOUND", "version 7"),
        ("bad_datatype", "400", "INVALID_ARGUMENT", "must be FP32, got FP64"),
        ("bad_shape", "400", "INVALID_ARGUMENT", "must have rank 4"),
        ("unknown_input", "400", "INVALID_ARGUMENT", "unknown input(s) ['pixels']"),
        ("unknown_output", "400", "INVALID_ARGUMENT", "'logits'"),
        ("signature_parameter", "400", "FAILED_PRECONDITION", 'Serving signature key "nope" not found'),
        ("metadata_unknown_model", "404", "NOT_FOUND", "model 'nope' is not served"),
        ("load_unknown_model", "404", "NOT_FOUND", "give its base path"),
        ("load_triton_config", "400", "INVALID_ARGUMENT", "['max_batch_size']"),
        ("unload_unknown_model", "404", "NOT_FOUND", "model 'ghost' is not served"),
        ("classification_negative", "400", "INVALID_ARGUMENT", "'classification' must be a positive integer"),
        ("classification_bytes_output", "400", "INVALID_ARGUMENT", "output 'echoed' is BYTES"),
        ("classification_rank_3", "400", "INVALID_ARGUMENT", "shape [-1, 4, 4]"),
    ],
)
def test_errors(triton: dict[str, Any], case: str, http_status: str, grpc_code: str, words: str) -> None:
    http, grpc_error = triton["errors"]["http"][case], triton["errors"]["grpc"][case]
    assert http["status"] == http_status and words in http["message"], http
    assert grpc_error["status"] == f"StatusCode.{grpc_code}" and words in grpc_error["message"], grpc_error


def tf_classify(server: ServerProcess, model: str, images: np.ndarray) -> list[list[list[Any]]]:
    """TF Serving's :classify of each image (its pixels as the `image` feature): [label, score] per class."""
    body = {"examples": [{"image": image.reshape(-1).tolist()} for image in images]}
    response = requests.post(f"{server.rest_url}/v1/models/{model}:classify", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def top_of(classes: list[list[Any]], count: int) -> list[str]:
    """Classify's [label, score] per class (in label order) -> the top `count` as the extension writes them."""
    ranked = sorted(range(len(classes)), key=lambda index: -classes[index][1])  # stable: ties by index
    return [f"{classes[i][1]:f}:{i}:{classes[i][0]}" for i in ranked[:count]]


def test_classification_equals_tf_serving_classify(triton: dict[str, Any], server: ServerProcess) -> None:
    answers = triton["classification"]
    inputs = _inputs()
    digits = tf_classify(server, "digits", inputs["digits"])
    expected = [top_of(classes, 3) for classes in digits]
    assert [label for label, _ in digits[0]] == [str(i) for i in range(10)]  # the model's labels
    for case in ("digits_http_binary", "digits_http_json", "digits_grpc"):
        answer = answers[case]
        assert answer["outputs"]["probabilities"] == expected, case
        assert answer["datatypes"]["probabilities"] == ["BYTES", [2, 3]], case
    assert answers["digits_http_binary"]["binary"] == [True] and answers["digits_http_json"]["binary"] == [False]
    # The same classes as argsort of Predict's probabilities.
    probabilities = np.array(tf_predict(server, "digits", {"instances": inputs["digits"].tolist()})["predictions"])
    indices = [[int(text.split(":")[1]) for text in row] for row in expected]
    assert indices == np.argsort(-probabilities, axis=1, kind="stable")[:, :3].tolist()
    # catdog has two classes: class_count 3 returns both ([1, 2]), as Triton's min(count, classes).
    catdog = [top_of(classes, 3) for classes in tf_classify(server, "catdog", inputs["catdog"])]
    assert len(catdog[0]) == 2 and {text.split(":")[2] for text in catdog[0]} == {"cat", "dog"}
    for case in ("catdog_http", "catdog_grpc"):
        assert answers[case]["outputs"]["probabilities"] == catdog, case
        assert answers[case]["datatypes"]["probabilities"] == ["BYTES", [1, 2]], case
    explain = answers["explain_http"]  # one output classified, the other as it is
    assert explain["outputs"]["probabilities"] == [catdog[0][:1]]
    assert explain["datatypes"]["heatmap"] == ["FP32", [1, 4, 4]]


def test_classification_without_labels(triton: dict[str, Any]) -> None:
    answers = triton["classification"]
    # No labels, so no label part; the tie (0.75 at 1 and 3) goes to the lower index first; count 5 of 4 classes: 4.
    assert answers["unlabelled_http"]["outputs"]["ranked"] == [
        ["0.750000:1", "0.750000:3", "0.500000:2", "0.250000:0"],
        ["10.000000:3", "3.000000:0", "2.000000:2", "-1.000000:1"],
    ]
    assert answers["unlabelled_http"]["datatypes"]["ranked"] == ["BYTES", [2, 4]]
    assert answers["unlabelled_http"]["datatypes"]["echoed"] == ["BYTES", [2, 3]]  # not classified
    assert answers["unlabelled_grpc"]["outputs"]["ranked"] == [["0.750000:1", "0.750000:3"], ["10.000000:3", "3.000000:0"]]
    assert answers["unlabelled_grpc"]["datatypes"]["ranked"] == ["BYTES", [2, 2]]
    not_integer = triton["errors"]["http"]["classification_not_integer"]
    assert not_integer["status"] == "400" and "got 2.5" in not_integer["message"], not_integer


def test_repository_load_and_unload(triton: dict[str, Any], server: ServerProcess) -> None:
    repository = triton["repository"]
    assert {"name": "sentiment", "version": "1", "state": "READY", "reason": ""} in repository["index_before"]
    unloaded = repository["after_unload"]
    assert unloaded["http_ready"] is False and unloaded["server_ready"] is True
    assert unloaded["infer"]["status"] == "404"
    assert {"name": "sentiment", "state": "UNAVAILABLE", "reason": "unloaded"} in unloaded["index"]["models"]
    assert repository["after_load"]["grpc_ready"] is True
    texts = ["good fun great", "awful dull bad"]
    expected = tf_predict(server, "sentiment", {"instances": texts})["predictions"]
    np.testing.assert_array_equal(np.array(repository["after_load"]["infer"]["outputs"]["probabilities"], np.float32),
                                  np.array(expected, np.float32))
    new = repository["new_model"]
    assert new["infer"]["model_name"] == "digits2"
    assert {"name": "digits2", "version": "1", "state": "READY", "reason": ""} in new["index"]
    assert repository["new_model_unloaded"]["status"] == "StatusCode.NOT_FOUND"


def test_proto_matches_tritonclient_and_the_spec(triton: dict[str, Any]) -> None:
    theirs = triton["descriptors"]
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == theirs["service"] == "inference.GRPCInferenceService"
    for method in service.methods:
        assert theirs["methods"][method.name] == [method.input_type.full_name, method.output_type.full_name]
    assert [m.name for m in service.methods][: len(SPEC_METHODS)] == list(SPEC_METHODS)
    checked = 0

    def walk(descriptor: Any) -> None:
        nonlocal checked
        if descriptor.GetOptions().map_entry:
            return
        spec = SPEC_FIELDS.get(descriptor.full_name.removeprefix("inference."))
        if spec is not None:
            assert {f.name: f.number for f in descriptor.fields} == spec, descriptor.full_name
        triton_fields = theirs["messages"][descriptor.full_name]
        for field in descriptor.fields:
            if field.name not in triton_fields:  # the spec's ModelMetadataResponse.properties only
                assert (descriptor.name, field.name) == ("ModelMetadataResponse", "properties")
                continue
            number, kind, repeated, _ = triton_fields[field.name]
            assert (field.number, field.type, field.is_repeated) == (number, kind, repeated), field.full_name
            checked += 1
        for nested in descriptor.nested_types:
            walk(nested)

    for descriptor in inference_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(descriptor)
    assert checked > 60


# -- without tritonclient --------------------------------------------------------------------


def test_rest_binary_format_and_errors(server: ServerProcess) -> None:
    url = f"{server.rest_url}/v2/models/sentiment/infer"
    texts = [b"good fun", "awful dull \u00e9".encode()]
    raw = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    header = json.dumps({"id": "x", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                                  "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    response = requests.post(url, data=header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:length])
    assert answer["id"] == "x" and answer["outputs"][0]["parameters"] == {"binary_data_size": 16}
    probabilities = np.frombuffer(response.content[length:], "<f4").reshape(2, 2)
    expected = tf_predict(server, "sentiment", {"instances": [t.decode() for t in texts]})["predictions"]
    np.testing.assert_array_equal(probabilities, np.array(expected, np.float32))

    def status(data: bytes, headers: dict[str, str] | None = None, path: str = url) -> tuple[int, str]:
        reply = requests.post(path, data=data, headers=headers or {})
        return reply.status_code, reply.json()["error"]

    short = {"Inference-Header-Content-Length": str(len(header) + len(raw) + 1)}
    assert status(header + raw, short)[0] == 400
    assert "binary data follow" in status(header + raw + b"xx", {"Inference-Header-Content-Length": str(len(header))})[1]
    assert "passes the end" in status(header + raw[:-1], {"Inference-Header-Content-Length": str(len(header))})[1]
    assert "unknown datatype" in status(json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "STRING", "data": ["a"]}]}).encode())[1]
    assert "needs 2 values" in status(json.dumps(
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}).encode())[1]
    assert status(b"{not json")[0] == 400
    assert requests.get(url).status_code == 405
    assert requests.get(f"{server.rest_url}/v2/nothing").status_code == 404
    nested = {"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32",
                          "data": np.zeros((1, 28, 28, 1)).tolist()}]}
    reply = requests.post(f"{server.rest_url}/v2/models/digits/versions/1/infer", json=nested)
    assert reply.status_code == 200 and len(reply.json()["outputs"][0]["data"]) == 10  # flat, as Triton
    assert requests.get(f"{server.rest_url}/v2/health/ready").json() == {"ready": True}


def test_classification_raw_rest_and_grpc(server: ServerProcess) -> None:
    """The extension's JSON form as its spec writes it, and class counts tritonclient never sends."""
    digits = _inputs()["digits"]
    expected = [top_of(classes, 2) for classes in tf_classify(server, "digits", digits)]
    url = f"{server.rest_url}/v2/models/digits/infer"
    image = {"name": "image", "shape": [2, 28, 28, 1], "datatype": "FP32", "data": digits.reshape(-1).tolist()}

    def rest(classification: Any) -> requests.Response:
        outputs = [{"name": "probabilities", "parameters": {"classification": classification}}]
        return requests.post(url, json={"id": "42", "inputs": [image], "outputs": outputs}, timeout=30)

    reply = rest(2)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"] == [
        {"name": "probabilities", "datatype": "BYTES", "shape": [2, 2], "data": expected[0] + expected[1]}
    ]
    for refused in (0, -3, 2.5, "2", True, None):
        reply = rest(refused)
        assert reply.status_code == 400 and "must be a positive integer" in reply.json()["error"], (refused, reply.text)

    tensor = inference_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="FP32", shape=[2, 28, 28, 1],
        contents=inference_pb2.InferTensorContents(fp32_contents=digits.reshape(-1).tolist()),
    )
    Parameter = inference_pb2.InferParameter

    def infer(classification: inference_pb2.InferParameter) -> inference_pb2.ModelInferResponse:
        output = inference_pb2.ModelInferRequest.InferRequestedOutputTensor(
            name="probabilities", parameters={"classification": classification})
        return stub.ModelInfer(inference_pb2.ModelInferRequest(model_name="digits", inputs=[tensor], outputs=[output]))

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = infer(Parameter(int64_param=2))
        (output,) = response.outputs  # typed in, typed out: bytes_contents
        assert (output.datatype, list(output.shape)) == ("BYTES", [2, 2]) and not response.raw_output_contents
        assert [v.decode() for v in output.contents.bytes_contents] == expected[0] + expected[1]
        for refused in (Parameter(int64_param=0), Parameter(int64_param=-1), Parameter(string_param="2"),
                        Parameter(double_param=2.0), Parameter(bool_param=True), Parameter()):
            with pytest.raises(grpc.RpcError) as error:
                infer(refused)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused
            assert "must be a positive integer" in error.value.details()


def test_grpc_typed_contents_and_metrics(server: ServerProcess) -> None:
    digits = _inputs()["digits"]
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="FP32", shape=[2, 28, 28, 1],
        contents=inference_pb2.InferTensorContents(fp32_contents=digits.reshape(-1).tolist()),
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(inference_pb2.ModelInferRequest(model_name="digits", inputs=[tensor]))
        assert not response.raw_output_contents  # typed in, typed out
        wrong = inference_pb2.ModelInferRequest.InferInputTensor(
            name="image", datatype="FP32", shape=[2, 28, 28, 1],
            contents=inference_pb2.InferTensorContents(fp64_contents=[0.0]),
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(inference_pb2.ModelInferRequest(model_name="digits", inputs=[wrong]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fp32_contents" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(inference_pb2.ModelInferRequest(
                model_name="digits", inputs=[tensor], raw_input_contents=[b"", b""]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    expected = tf_predict(server, "digits", {"instances": digits.tolist()})["predictions"]
    np.testing.assert_array_equal(
        np.array(response.outputs[0].contents.fp32_contents, np.float32).reshape(2, 10), np.array(expected, np.float32)
    )
    metrics = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics").text
    assert 'model_server_requests_total{API="v2_infer",entrypoint="GRPC",model_name="digits",status="OK"}' in metrics
    assert 'API="v2_infer",entrypoint="GRPC",model_name="digits",status="INVALID_ARGUMENT"' in metrics


def test_grpc_large_raw_inputs_read_in_place(server: ServerProcess) -> None:
    """Over 64 KiB of raw_input_contents is read in place (serving.protocol.grpc.inplace): the same
    answers as TF Serving's REST API, and the same byte-count error."""
    digits = np.random.default_rng(4).uniform(0, 255, (40, 28, 28, 1)).astype(np.float32)  # 125 KB
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=list(digits.shape))
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(
            inference_pb2.ModelInferRequest(model_name="digits", inputs=[tensor], raw_input_contents=[digits.tobytes()])
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(inference_pb2.ModelInferRequest(
                model_name="digits", inputs=[tensor], raw_input_contents=[digits.tobytes()[:-4]]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "got 125436" in error.value.details()
    expected = tf_predict(server, "digits", {"instances": digits.tolist()})["predictions"]
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[0], np.float32).reshape(40, 10), np.array(expected, np.float32)
    )


@pytest.mark.parametrize("datatype", sorted(common.DATATYPES))
def test_raw_round_trip_of_every_datatype(datatype: str) -> None:
    dtype = common.DATATYPES[datatype]
    if dtype == codec.STRING:
        value = np.array([b"", b"a", "\u00e9".encode(), b"\x00\xff"], dtype=object).reshape(2, 2)
    elif dtype == np.bool_:
        value = np.array([[True, False], [False, True]])
    else:
        value = (np.arange(4) * 3).astype(dtype).reshape(2, 2)
    assert common.datatype_of(value.dtype) == datatype
    raw = common.encode_raw(value)
    if dtype != codec.STRING:
        assert raw == value.astype(dtype.newbyteorder("<")).tobytes()
    decoded = common.decode_raw(datatype, [2, 2], raw, "x", 1 << 20)
    assert decoded.dtype == value.dtype and decoded.tolist() == value.tolist()
    json_values = [v.decode("latin-1") for v in value.reshape(-1)] if dtype == codec.STRING else value.tolist()
    from_json = common.decode_values(datatype, [2, 2], json_values, "x", 1 << 20)
    assert from_json.dtype == value.dtype and from_json.shape == (2, 2)


def test_decode_refuses_malformed_tensors() -> None:
    with pytest.raises(InvalidArgument, match="needs 16 bytes"):
        common.decode_raw("FP32", [4], b"\x00" * 15, "x", 1 << 20)
    with pytest.raises(InvalidArgument, match="over the"):
        common.decode_raw("FP32", [1 << 20, 1 << 20], b"", "x", 1 << 20)
    with pytest.raises(InvalidArgument, match="claims"):
        common.decode_raw("BYTES", [1], struct.pack("<I", 9) + b"abc", "x", 1 << 20)
    with pytest.raises(InvalidArgument, match="must be integers"):
        common.decode_values("INT64", [2], [1.5, 2.0], "x", 1 << 20)
    with pytest.raises(InvalidArgument, match="out of the range"):
        common.decode_values("UINT8", [1], [300], "x", 1 << 20)
    with pytest.raises(InvalidArgument, match="must be booleans"):
        common.decode_values("BOOL", [1], [1], "x", 1 << 20)
    with pytest.raises(InvalidArgument, match="must be numbers"):
        common.decode_values("FP32", [1], ["1.5"], "x", 1 << 20)
    assert common.parse_version("12") == (12, None) and common.parse_version("stable") == (None, "stable")


def test_top_classes_and_classification_checks() -> None:
    # Triton's example: [1, 5, 10, 4] -> "10:2", "5:1"; integer outputs write integer values.
    assert common.top_classes(np.array([[1, 5, 10, 4]], np.uint32), 2, (), "o").tolist() == [[b"10:2", b"5:1"]]
    # Floats as C's %f (Triton's std::to_string); labels only when one per class; count past the classes: all.
    scores = np.array([[1.1, 3.3, 0.5, 2.4]], np.float32)
    assert common.top_classes(scores, 9, ("a", "b", "c", "d"), "o").tolist() == [
        [b"3.300000:1:b", b"2.400000:3:d", b"1.100000:0:a", b"0.500000:2:c"]
    ]
    assert common.top_classes(scores, 1, ("a", "b"), "o").tolist() == [[b"3.300000:1"]]
    assert common.top_classes(np.array([[0.0, 1.0], [1.0, 1.0]]), 2, (), "o").tolist() == [
        [b"1.000000:1", b"0.000000:0"], [b"1.000000:0", b"1.000000:1"]]  # a tie: the lower index first
    assert common.top_classes(np.zeros((3, 4), np.int8), 2, (), "o").shape == (3, 2)
    for value in (np.array([[b"x"]], dtype=object), np.array([[True]]), np.zeros(3), np.zeros((1, 2, 2))):
        with pytest.raises(InvalidArgument, match="output 'o'"):
            common.top_classes(value, 1, (), "o")
    assert common.classification_count({}, "o") == 0
    assert common.classification_count({"classification": 3, "binary_data": True}, "o") == 3
    for refused in (0, -1, 2.5, "3", True, None):
        with pytest.raises(InvalidArgument, match="must be a positive integer") as error:
            common.classification_count({"classification": refused}, "o")
        assert error.value.http_status == 400 and error.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    signature = Signature("s", "tensorflow/serving/predict", {}, {
        "probabilities": TensorMeta(np.dtype(np.float32), (-1, 10)),
        "names": TensorMeta(codec.STRING, (-1, 10)),
        "label": TensorMeta(np.dtype(np.int64), (-1,)),
    })
    common.check_classification(signature, "probabilities")
    common.check_classification(signature, "logits")  # unknown: the data plane's output check says it
    with pytest.raises(InvalidArgument, match="output 'names' is BYTES"):
        common.check_classification(signature, "names")
    with pytest.raises(InvalidArgument, match=r"shape \[-1\]"):
        common.check_classification(signature, "label")


def test_generated_grpc_stub_is_fresh(tmp_path: Path) -> None:
    """tests/serving/test_protos.py checks the *_pb2 files; this one the V2 service stub."""
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO_ROOT / 'protos'}", f"--grpc_python_out={tmp_path}",
         str(REPO_ROOT / "protos/serving/proto/inference.proto")],
        check=True,
    )
    generated = (tmp_path / "serving/proto/inference_pb2_grpc.py").read_text()
    assert (REPO_ROOT / "serving/proto/inference_pb2_grpc.py").read_text() == generated, "run `make protos`"


_RAW_OUTPUTS = {
    "probabilities": np.arange(20, dtype=np.float32).reshape(2, 10),
    "ids": np.array([[1, -(1 << 40)]], dtype=np.int64),
    "flags": np.array([True, False]),
    "half": np.array([0.5], dtype=np.float16),
    "labels": np.array([b"cat", "dög".encode()], dtype=object),
    "scalar": np.array(2.5, dtype=np.float64),
    "empty": np.zeros((0, 3), np.float32),
    "wide": np.zeros((1, 300), np.uint8),  # a dim over 127: a two-byte varint
    "ümlaut": np.ones((1, 1), np.float32),
}


@pytest.mark.parametrize("name", sorted(_RAW_OUTPUTS))
@pytest.mark.parametrize(("model", "request_id"), [("digits", "req-7"), ("dígits", ""), ("", "")])
def test_the_raw_response_parses_as_the_message_built_field_by_field(name: str, model: str, request_id: str) -> None:
    from serving.protocol.v2.grpc import infer_response_raw

    outputs = {name: _RAW_OUTPUTS[name], "second": np.ones((2, 1), np.float32)}
    expected = inference_pb2.ModelInferResponse(model_name=model, model_version="3", id=request_id)
    for key, value in outputs.items():
        expected.outputs.add(name=key, datatype=common.datatype_of(value.dtype), shape=common.shape_of(value))
        expected.raw_output_contents.append(common.encode_raw(value))
    assert inference_pb2.ModelInferResponse.FromString(infer_response_raw(model, "3", request_id, outputs)) == expected
