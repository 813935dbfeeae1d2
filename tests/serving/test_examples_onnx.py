"""Classify, Regress and MultiInference on ONNX models, over the real server (gRPC and REST).

ONNX models have no tf.Example signature: an example's features are fed as the signature's inputs
of the same names (see `DataPlane.classify`). Two tiny models, no TensorFlow:
- `line` (written here): `x` float32 [N,1] -> `y` = 0.5x + 2 [N,1] (serving_default, regressable)
  and `probabilities` = softmax([x, -x]) [N,2] labelled ("high", "low") (signature `classify_x`);
- `tiny` (tests/serving/fixtures.py): the digits stand-in, `probabilities` [N,10], no regression.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.manifest import Manifest, OnnxBinding, SignatureManifest, TensorSpec, sha256_file, write_manifest
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import ServerProcess, start_server, write_config, write_tiny_version

pytestmark = pytest.mark.slow

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def write_line_version(base: Path, version: int) -> None:
    nodes = [
        helper.make_node("Mul", ["x", "half"], ["half_x"]),
        helper.make_node("Add", ["half_x", "two"], ["y"]),  # [N, 1]
        helper.make_node("Neg", ["x"], ["minus_x"]),
        helper.make_node("Concat", ["x", "minus_x"], ["logits"], axis=1),  # [N, 2]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "line",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = base / str(version)
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    x = {"x": TensorSpec("float32", (-1, 1))}
    signatures = {
        "serving_default": SignatureManifest(
            "tensorflow/serving/predict",
            x,
            {"y": TensorSpec("float32", (-1, 1))},
            OnnxBinding("model.onnx", {"x": "x"}, {"y": "y"}),
        ),
        "classify_x": SignatureManifest(
            "tensorflow/serving/predict",
            x,
            {"probabilities": TensorSpec("float32", (-1, 2))},
            OnnxBinding("model.onnx", {"x": "x"}, {"probabilities": "probabilities"}),
        ),
    }
    files = {"model.onnx": sha256_file(folder / "model.onnx")}
    write_manifest(folder, Manifest(base.name, version, "regression", ("high", "low"), signatures, files=files))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("models")
    write_line_version(models / "line", 1)
    write_tiny_version(models / "tiny", 1)
    folder = tmp_path_factory.mktemp("config")
    config = write_config(folder / "models.config", {"line": models / "line", "tiny": models / "tiny"})
    process = start_server(["--model_config_file", str(config)], folder / "server.log")
    yield process
    assert process.stop() == 0, process.log()
    assert "internal error" not in process.log()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[apis_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield apis_pb2_grpc.PredictionServiceStub(channel)


def examples(*xs: float) -> apis_pb2.Input:
    request_input = apis_pb2.Input()
    for x in xs:
        request_input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return request_input


def regress_request(model: str, signature: str, request_input: apis_pb2.Input) -> apis_pb2.RegressionRequest:
    request = apis_pb2.RegressionRequest(input=request_input)
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    return request


def error_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def rest(server: ServerProcess, path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(server.rest_url + path, data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def softmax_high(x: float) -> float:
    return float(1 / (1 + np.exp(-2 * np.float32(x))))


def test_regress(stub: apis_pb2_grpc.PredictionServiceStub, server: ServerProcess) -> None:
    response = stub.Regress(regress_request("line", "", examples(2.0, 4.0, -1.0)), timeout=20)
    assert [r.value for r in response.result.regressions] == [3.0, 4.0, 1.5]
    spec = response.model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == ("line", "serving_default", 1)
    body = {"examples": [{"x": 2.0}, {"x": 4}]}  # an integer feature feeds the float input too
    assert rest(server, "/v1/models/line:regress", body) == (200, {"results": [3.0, 4.0]})


def test_multi_inference(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = apis_pb2.MultiInferenceRequest(input=examples(1.0))
    for signature, method in (("serving_default", REGRESS), ("classify_x", CLASSIFY)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "line"
        task.model_spec.signature_name = signature
    regression, classification = stub.MultiInference(request, timeout=20).results
    assert [r.value for r in regression.regression_result.regressions] == [2.5]
    (classes,) = classification.classification_result.classifications
    assert [c.label for c in classes.classes] == ["high", "low"]
    np.testing.assert_allclose([c.score for c in classes.classes], [softmax_high(1.0), 1 - softmax_high(1.0)], rtol=1e-5)
    assert [r.model_spec.signature_name for r in (regression, classification)] == ["serving_default", "classify_x"]
    request.tasks[1].model_spec.name = "tiny"
    code, details = error_of(lambda: stub.MultiInference(request, timeout=20))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    )


def test_regress_needs_one_float_output_of_one_value_per_example(
    stub: apis_pb2_grpc.PredictionServiceStub, server: ServerProcess
) -> None:
    code, details = error_of(lambda: stub.Regress(regress_request("line", "classify_x", examples(2.0)), timeout=20))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [?,2]")
    status, body = rest(server, "/v1/models/tiny:regress", {"examples": [{"image": [0.0] * 784}]})
    assert status == 400 and "[?,10]" in body["error"]
    code, details = error_of(lambda: stub.Regress(regress_request("line", "", apis_pb2.Input()), timeout=20))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    wrong = apis_pb2.Input()
    wrong.example_list.examples.add().features.feature["x"].bytes_list.value.append(b"2")
    code, details = error_of(lambda: stub.Regress(regress_request("line", "", wrong), timeout=20))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "feature 'x' must hold numbers" in details
    code, _ = error_of(lambda: stub.Regress(regress_request("line", "nope", examples(2.0)), timeout=20))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # an unknown signature, as Predict answers it


def test_classify_keeps_its_onnx_behaviour(stub: apis_pb2_grpc.PredictionServiceStub, server: ServerProcess) -> None:
    request = apis_pb2.ClassificationRequest(input=examples(0.5))
    request.model_spec.name = "line"
    request.model_spec.signature_name = "classify_x"
    (classes,) = stub.Classify(request, timeout=20).result.classifications
    np.testing.assert_allclose([c.score for c in classes.classes], [softmax_high(0.5), 1 - softmax_high(0.5)], rtol=1e-5)
    status, body = rest(server, "/v1/models/line:classify", {"signature_name": "classify_x", "examples": [{"x": 0.5}]})
    assert status == 200 and [label for label, _ in body["results"][0]] == ["high", "low"]
    request.model_spec.signature_name = ""  # y has no labelled probabilities
    code, details = error_of(lambda: stub.Classify(request, timeout=20))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "probabilities" in details
