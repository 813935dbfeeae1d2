"""TF Serving's own model-server test cases, replayed against this server with `--backend tensorflow`.

TF Serving tests its binary (`tensorflow_serving/model_servers/tensorflow_model_server_test.py`) on
`saved_model_half_plus_two_cpu`: a TF1 SavedModel computing y = 0.5x + 2 in a version folder named
`00000123`. `build_half_plus_two` below writes a model of that description (our own code, from the
facts of TF Serving's testdata generator): variables a=0.5, b=2, c=3 and a separate a2=0.5, c2=3; a
string placeholder `tf_example` of unknown rank parsed as tf.Examples with float features `x` [1]
and `x2` [1] (default 0); `y = a*x + b`, `y2 = a*x + c`, `y3 = a2*x2 + c2`; and the signatures

    serving_default   predict   x:0 -> y:0
    classify_x_to_y   classify  inputs=tf_example:0 -> scores=y:0
    regress_x_to_y    regress   inputs=tf_example:0 -> outputs=y:0
    regress_x_to_y2   regress   inputs=tf_example:0 -> outputs=y2:0
    regress_x2_to_y3  regress   inputs=x2:0 -> outputs=y3:0

plus an asset file (`assets/foo.txt`) restored through the asset collection.

The expected answers, REST bodies and JSON are TF Serving's (its test and
`half_plus_two_model_metadata.json`), written here as test data. One server process serves the
module (TensorFlow takes seconds to import), the model is built once in a child process, so this
test process never imports TensorFlow.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from serving.proto import apis_pb2, apis_pb2_grpc, tensor_pb2
from tests.serving.fixtures import REPO_ROOT, ServerProcess, start_server

pytestmark = pytest.mark.slow

MODEL = "default"
VERSION = 123
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"


def build_half_plus_two(export_dir: Path) -> None:
    """Write half_plus_two (see the module docstring) as a TF1 SavedModel into `export_dir`."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        c = v1.Variable(3.0, name="c")
        a2 = v1.Variable(0.5, name="a2")
        c2 = v1.Variable(3.0, name="c2")
        serialized = v1.placeholder(tf.string, name="tf_example")  # no shape: unknown rank
        features = v1.parse_example(
            serialized,
            {
                "x": v1.FixedLenFeature([1], tf.float32),
                "x2": v1.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        x = tf.identity(features["x"], name="x")
        x.set_shape([None, 1])  # [-1, 1] in the SignatureDef, as in TF Serving's copy
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        x2 = tf.identity(features["x2"], name="x2")
        x2.set_shape([None, 1])
        y3 = tf.identity(a2 * x2 + c2, name="y3")

        asset_source = export_dir.parent / "foo.txt"
        asset_source.write_text("asset-file-contents")
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, tf.constant(str(asset_source)))
        filename = v1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])

        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def
        signatures = {
            "serving_default": signature({"x": info(x)}, {"y": info(y)}, PREDICT),
            "classify_x_to_y": signature({"inputs": info(serialized)}, {"scores": info(y)}, CLASSIFY),
            "regress_x_to_y": signature({"inputs": info(serialized)}, {"outputs": info(y)}, REGRESS),
            "regress_x_to_y2": signature({"inputs": info(serialized)}, {"outputs": info(y2)}, REGRESS),
            "regress_x2_to_y3": signature({"inputs": info(x2)}, {"outputs": info(y3)}, REGRESS),
        }
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(
                session,
                [v1.saved_model.tag_constants.SERVING],
                signature_def_map=signatures,
                assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
                main_op=v1.group(filename.assign("foo.txt")),
            )
            builder.save()


# -- TF Serving's expected answers ----------------------------------------------------------------


def _tensor(name: str, dtype: str, dims: list[int] | None) -> dict[str, Any]:
    """A TensorInfo as TF Serving's REST metadata prints it (dims None: unknown rank)."""
    shape = {"dim": [{"size": str(d), "name": ""} for d in dims or []], "unknown_rank": dims is None}
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _signature(method: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": inputs, "outputs": outputs, "method_name": method, "defaults": {}}


_EXAMPLES = _tensor("tf_example:0", "DT_STRING", None)
EXPECTED_METADATA = {
    "model_spec": {"name": MODEL, "signature_name": "", "version": str(VERSION)},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "regress_x2_to_y3": _signature(
                    REGRESS,
                    {"inputs": _tensor("x2:0", "DT_FLOAT", [-1, 1])},
                    {"outputs": _tensor("y3:0", "DT_FLOAT", [-1, 1])},
                ),
                "serving_default": _signature(
                    PREDICT, {"x": _tensor("x:0", "DT_FLOAT", [-1, 1])}, {"y": _tensor("y:0", "DT_FLOAT", [-1, 1])}
                ),
                "classify_x_to_y": _signature(
                    CLASSIFY, {"inputs": _EXAMPLES}, {"scores": _tensor("y:0", "DT_FLOAT", [-1, 1])}
                ),
                "regress_x_to_y2": _signature(
                    REGRESS, {"inputs": _EXAMPLES}, {"outputs": _tensor("y2:0", "DT_FLOAT", [-1, 1])}
                ),
                "regress_x_to_y": _signature(
                    REGRESS, {"inputs": _EXAMPLES}, {"outputs": _tensor("y:0", "DT_FLOAT", [-1, 1])}
                ),
            }
        }
    },
}


# -- the model and the server ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def half_plus_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model's base path, holding `00000123/` (built once, in a child process)."""
    base = tmp_path_factory.mktemp("half_plus_two") / "saved_model_half_plus_two_cpu"
    base.mkdir()
    subprocess.run(
        [sys.executable, "-m", "tests.serving.test_half_plus_two", str(base / "00000123")],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return base


@pytest.fixture(scope="module")
def server(half_plus_two: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("server")
    (folder / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    process = start_server(
        [
            "--backend",
            "tensorflow",
            "--model_name",
            MODEL,
            "--model_base_path",
            str(half_plus_two),
            "--monitoring_config_file",
            str(folder / "monitoring.config"),
        ],
        folder / "server.log",
        timeout=180,
    )
    yield process
    assert process.stop() == 0, process.log()
    assert "internal error" not in process.log()  # every bad request was answered as a ServingError


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> apis_pb2_grpc.PredictionServiceStub:
    return apis_pb2_grpc.PredictionServiceStub(channel)


def rest(server: ServerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(server.rest_url + path, data=data), timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def error_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def x_examples(*values: float) -> apis_pb2.Input:
    request_input = apis_pb2.Input()
    for value in values:
        example = request_input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(value)
    return request_input


def assert_model_spec(spec: apis_pb2.ModelSpec, signature: str) -> None:
    assert (spec.name, spec.signature_name, spec.version.value) == (MODEL, signature, VERSION)


# -- TF Serving's cases: gRPC ---------------------------------------------------------------------


def test_predict(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    """testPredictSavedModel: x = [2.0] (shape [1], as float_val) -> y = 3.0, read from float_val."""
    for output_filter in (["y"], []):
        request = apis_pb2.PredictRequest(output_filter=output_filter)
        request.model_spec.name = MODEL
        request.model_spec.signature_name = "serving_default"
        request.inputs["x"].dtype = tensor_pb2.DT_FLOAT
        request.inputs["x"].float_val.append(2.0)
        request.inputs["x"].tensor_shape.dim.add().size = 1
        result = stub.Predict(request, timeout=20)
        assert list(result.outputs) == ["y"]
        assert result.outputs["y"].dtype == tensor_pb2.DT_FLOAT
        assert list(result.outputs["y"].float_val) == [3.0]
        assert_model_spec(result.model_spec, "serving_default")


def test_classify(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = apis_pb2.ClassificationRequest(input=x_examples(2.0))
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify_x_to_y"
    result = stub.Classify(request, timeout=20)
    assert len(result.result.classifications) == 1
    assert [(c.label, c.score) for c in result.result.classifications[0].classes] == [("", 3.0)]
    assert_model_spec(result.model_spec, "classify_x_to_y")


def test_regress(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = apis_pb2.RegressionRequest(input=x_examples(2.0))
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    result = stub.Regress(request, timeout=20)
    assert [r.value for r in result.result.regressions] == [3.0]
    assert_model_spec(result.model_spec, "regress_x_to_y")
    # Beyond TF Serving's case: several examples, the other signatures, and a context.
    request.input.CopyFrom(x_examples(2.0, 4.0, -1.0))
    assert [r.value for r in stub.Regress(request, timeout=20).result.regressions] == [3.0, 4.0, 1.5]
    request.model_spec.signature_name = "regress_x_to_y2"
    assert [r.value for r in stub.Regress(request, timeout=20).result.regressions] == [4.0, 5.0, 2.5]
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(10.0)
    with_context.examples.add().features.feature["x2"].float_list.value.append(1.0)  # x from the context
    with_context.examples.add().features.feature["x"].float_list.value.append(0.0)  # its own x wins
    request.model_spec.signature_name = "regress_x_to_y"
    assert [r.value for r in stub.Regress(request, timeout=20).result.regressions] == [7.0, 2.0]


def test_multi_inference(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = apis_pb2.MultiInferenceRequest(input=x_examples(2.0))
    for signature, method in (("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature
    result = stub.MultiInference(request, timeout=20)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for task, answer in zip(request.tasks, result.results, strict=True):
        assert_model_spec(answer.model_spec, task.model_spec.signature_name)


def test_model_status(channel: grpc.Channel) -> None:
    request = apis_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    result = apis_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=20)
    assert [s.version for s in result.model_version_status] == [VERSION]  # the folder is `00000123`
    assert result.model_version_status[0].status.error_code == 0
    assert result.model_version_status[0].state == apis_pb2.ModelVersionStatus.AVAILABLE


def test_model_metadata(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = apis_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    result = stub.GetModelMetadata(request, timeout=20)
    assert (result.model_spec.name, result.model_spec.version.value) == (MODEL, VERSION)
    assert list(result.metadata) == ["signature_def"]
    signatures = apis_pb2.SignatureDefMap()
    assert result.metadata["signature_def"].Unpack(signatures)
    examples = signatures.signature_def["classify_x_to_y"].inputs["inputs"]
    assert (examples.name, examples.dtype, examples.tensor_shape.unknown_rank) == ("tf_example:0", tensor_pb2.DT_STRING, True)
    x = signatures.signature_def["serving_default"].inputs["x"]
    assert (x.name, [d.size for d in x.tensor_shape.dim]) == ("x:0", [-1, 1])


# -- TF Serving's cases: REST ---------------------------------------------------------------------


def test_rest_classify(server: ServerProcess) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert rest(server, f"/v1/models/{MODEL}:classify", body) == (200, {"results": [[["", 3.0]]]})


def test_rest_regress(server: ServerProcess) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert rest(server, f"/v1/models/{MODEL}:regress", body) == (200, {"results": [3.0]})
    # A context, merged into every example (an example's own feature wins), and the version path.
    body = {"signature_name": "regress_x_to_y", "context": {"x": 10.0}, "examples": [{"x2": 1.0}, {"x": 4.0}]}
    assert rest(server, f"/v1/models/{MODEL}/versions/{VERSION}:regress", body) == (200, {"results": [7.0, 4.0]})


def test_rest_predict(server: ServerProcess) -> None:
    assert rest(server, f"/v1/models/{MODEL}:predict", {"instances": [2.0, 3.0, 4.0]}) == (
        200,
        {"predictions": [3.0, 3.5, 4.0]},
    )
    assert rest(server, f"/v1/models/{MODEL}:predict", {"inputs": [2.0, 3.0, 4.0]}) == (
        200,
        {"outputs": [3.0, 3.5, 4.0]},
    )


def test_rest_status(server: ServerProcess) -> None:
    assert rest(server, f"/v1/models/{MODEL}") == (
        200,
        {
            "model_version_status": [
                {"version": str(VERSION), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )


def test_rest_metadata(server: ServerProcess) -> None:
    status, body = rest(server, f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert body == EXPECTED_METADATA  # the whole body, as TF Serving's test compares it


# -- errors, with TF Serving's codes and words ----------------------------------------------------


def test_classify_and_regress_errors(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    def classify(signature: str, request_input: apis_pb2.Input | None = None) -> tuple[grpc.StatusCode, str]:
        request = apis_pb2.ClassificationRequest(input=request_input or x_examples(2.0))
        request.model_spec.name = MODEL
        request.model_spec.signature_name = signature
        return error_of(lambda: stub.Classify(request, timeout=20))

    def regress(signature: str, request_input: apis_pb2.Input | None = None) -> tuple[grpc.StatusCode, str]:
        request = apis_pb2.RegressionRequest(input=request_input or x_examples(2.0))
        request.model_spec.name = MODEL
        request.model_spec.signature_name = signature
        return error_of(lambda: stub.Regress(request, timeout=20))

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    code, details = classify("regress_x_to_y")
    assert code == invalid
    assert details.startswith('Expected classification signature outputs to contain at least one of "classes" or "scores"')
    assert 'method_name: "tensorflow/serving/regress"' in details  # the SignatureDef, quoted
    code, details = regress("classify_x_to_y")
    assert code == invalid and details.startswith("No regression outputs found in SignatureDef: ")
    code, details = regress("")  # serving_default: x -> y
    assert code == invalid and details.startswith("No regression inputs found in SignatureDef: ")
    assert classify("nope") == (invalid, "No signature was found with the name: nope")
    assert regress("regress_x_to_y", apis_pb2.Input()) == (invalid, "Input is empty.")
    code, details = regress("regress_x2_to_y3")  # its `inputs` is a float tensor, not tf.Examples
    assert code == invalid and "serialized" in details
    wrong_type = apis_pb2.Input()
    wrong_type.example_list.examples.add().features.feature["x"].int64_list.value.append(2)
    code, details = regress("regress_x_to_y", wrong_type)  # parse_example refuses it
    assert code == invalid and "Data types don't match" in details
    missing = apis_pb2.Input()
    missing.example_list.examples.add().features.feature["x2"].float_list.value.append(2.0)
    code, details = classify("classify_x_to_y", missing)
    assert code == invalid and "Feature: x (data type: float) is required" in details
    request = apis_pb2.RegressionRequest(input=x_examples(2.0))
    request.model_spec.name = "ghost"
    assert error_of(lambda: stub.Regress(request, timeout=20))[0] == grpc.StatusCode.NOT_FOUND


def test_multi_inference_errors(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    def multi(*tasks: tuple[str, str, str]) -> tuple[grpc.StatusCode, str]:
        request = apis_pb2.MultiInferenceRequest(input=x_examples(2.0))
        for model, signature, method in tasks:
            task = request.tasks.add(method_name=method)
            task.model_spec.name = model
            task.model_spec.signature_name = signature
        return error_of(lambda: stub.MultiInference(request, timeout=20))

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert multi((MODEL, "regress_x_to_y", REGRESS), ("other", "classify_x_to_y", CLASSIFY)) == (
        invalid,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    )
    assert multi((MODEL, "regress_x_to_y", REGRESS), (MODEL, "regress_x_to_y", REGRESS)) == (
        invalid,
        "Duplicate evaluation of signature: regress_x_to_y",
    )
    assert multi((MODEL, "nope", REGRESS)) == (invalid, "Requested signature not found in model graph: nope")
    assert multi((MODEL, "regress_x_to_y", PREDICT)) == (
        grpc.StatusCode.UNIMPLEMENTED,
        f"Unsupported signature method_name: {PREDICT}",
    )
    code, details = multi((MODEL, "regress_x_to_y", CLASSIFY))
    assert code == invalid and details.startswith("Expected classification signature outputs")
    assert multi((MODEL, "regress_x_to_y", REGRESS), ("", "classify_x_to_y", CLASSIFY)) == (
        invalid,
        "Found ModelSpec with an empty model name.",
    )


def test_rest_errors(server: ServerProcess) -> None:
    path = f"/v1/models/{MODEL}:regress"
    assert rest(server, path, {"signature_name": "regress_x_to_y", "examples": []}) == (
        400,
        {"error": "'examples' value is an empty array"},
    )
    assert rest(server, path, {"signature_name": "regress_x_to_y"}) == (
        400,
        {"error": "When method is regress, key 'examples' is expected and was not found"},
    )
    status, body = rest(server, path, {"signature_name": "regress_x_to_y", "examples": [{"x": [2.0, None]}]})
    assert (status, body["error"]) == (400, "Feature: x has element with unexpected JSON type: null")
    status, body = rest(server, path, {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]})
    assert status == 400 and "Data types don't match" in body["error"]  # an integer is an int64 feature
    status, body = rest(server, f"/v1/models/{MODEL}:classify", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert status == 400 and body["error"].startswith("Expected classification signature outputs")
    status, body = rest(server, f"/v1/models/{MODEL}:predict", {"instances": [{"x": "two"}]})
    assert status == 400  # a string for the float input x


def test_metrics_count_regress_and_multi_inference(server: ServerProcess, stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    """TF Serving's series: request latency by API ("Regress" on gRPC, "regress" on REST); the
    examples of MultiInference; and the project's count of every call by API."""
    test_rest_regress(server)
    test_regress(stub)
    test_multi_inference(stub)
    text = urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=20).read().decode()

    def series(prefix: str, *labels: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(prefix) and all(lab in line for lab in labels)]

    latency = ":tensorflow:serving:request_latency_count"
    assert series(latency, f'model_name="{MODEL}"', 'API="regress"', 'entrypoint="REST"'), text
    assert series(latency, f'model_name="{MODEL}"', 'API="Regress"', 'entrypoint="GRPC"'), text
    assert series(":tensorflow:serving:request_example_count_total", f'model="{MODEL}"'), text
    calls = [line for line in series("model_server_requests_total", 'API="multi_inference"', 'entrypoint="GRPC"') if re.search(r"\} [1-9]", line)]
    assert calls, text


if __name__ == "__main__":  # python -m tests.serving.test_half_plus_two EXPORT_DIR (the fixture's child)
    build_half_plus_two(Path(sys.argv[1]))
