"""The user's own models, served without a manifest, and ONNX Runtime provider selection.

- A version folder with only `model.onnx` is served (gRPC and REST) with the signature its graph
  declares; `GetModelMetadata` describes it. A bare SavedModel (`tf.saved_model.save` of a
  `tf.Module`) is served by the TensorFlow backend beside it, although `--backend` is onnx.
- Where TensorFlow cannot be imported (hidden here by a `tensorflow` module that raises), the bare
  SavedModel is reported END with what to do; `--onnx_require_accelerator` fails a version that
  would run on the CPU (this test environment's onnxruntime has no accelerator).
- `choose_providers` / `check_session_providers` on the lists ONNX Runtime reports (no GPU needed).

One server with TensorFlow (its import is most of this module's time) and one without.
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving import codec
from serving.backends import version_platform
from serving.backends.providers import (
    ProviderUnavailable,
    check_session_providers,
    choose_providers,
)
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import ServerProcess, start_server, write_config

pytestmark = pytest.mark.slow

HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
WEIGHTS = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -0.5], [0.0, 1.0, 1.0], [-1.0, 0.5, 0.0]], np.float32)
BIAS = np.array([0.1, 0.2, -0.3], np.float32)
AFFINE_W = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
AFFINE_B = [0.5, -0.5]

# What ONNX Runtime reports (`get_available_providers()`) for its CPU and GPU wheels.
CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CUDA_FIRST = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def write_bare_onnx(version_dir: Path) -> None:
    """A PyTorch-style graph: input `input.1` float [batch,4] -> `logits` float [batch,3] and
    `label` int64 [batch] (argmax), symbolic batch dimension, no manifest beside it."""
    nodes = [
        helper.make_node("MatMul", ["input.1", "W"], ["product"]),
        helper.make_node("Add", ["product", "b"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "users_own",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True)
    onnx.save(model, version_dir / "model.onnx")


def write_bare_string_onnx(version_dir: Path) -> None:
    """A graph on strings: `text` string [batch] -> `same` string [batch] (Identity; ONNX's string ops
    that change text, such as StringNormalizer, need OS locales this test cannot count on)."""
    node = helper.make_node("Identity", ["text"], ["same"])
    graph = helper.make_graph(
        [node],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True)
    onnx.save(model, version_dir / "model.onnx")


def write_bare_saved_model(version_dir: Path) -> None:
    """`tf.saved_model.save` of a tf.Module: x float [N,3] -> y = x @ W + b, float [N,2]."""
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(AFFINE_W)
            self.b = tf.Variable(AFFINE_B)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, self.w) + self.b}

    module = Affine()
    tf.saved_model.save(module, str(version_dir), signatures=module.__call__.get_concrete_function())


def rest(server: ServerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.rest_url + path, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metrics_page(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def version_status(server: ServerProcess, model: str, state: int, timeout: float = 30) -> Any:
    """GetModelStatus of `model`'s version 1 once it reaches `state` (polled)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = apis_pb2_grpc.ModelServiceStub(channel)
        while True:
            request = apis_pb2.GetModelStatusRequest()
            request.model_spec.name = model
            try:
                statuses = stub.GetModelStatus(request, timeout=5).model_version_status
            except grpc.RpcError:
                statuses = []
            if statuses and statuses[0].state == state:
                return statuses[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{model} never reached state {state}: {statuses}\n{server.log()}")
            time.sleep(0.05)


# -------------------------------------------------------------------------- a server with TensorFlow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("byom-models")
    write_bare_onnx(root / "bare" / "1")
    write_bare_string_onnx(root / "strings" / "1")
    found = {"bare": root / "bare", "strings": root / "strings"}
    if HAS_TENSORFLOW:
        write_bare_saved_model(root / "affine" / "1")
        found["affine"] = root / "affine"
    return found


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = write_config(tmp_path_factory.mktemp("config") / "models.config", models)
    process = start_server(
        ["--model_config_file", str(config), "--onnx_providers", ",".join(CUDA_FIRST)],
        tmp_path_factory.mktemp("log") / "server.log",
        timeout=120,  # TensorFlow's import
    )
    yield process
    assert process.stop() == 0, process.log()


def test_bare_onnx_metadata_is_the_graph(server: ServerProcess) -> None:
    status, body = rest(server, "/v1/models/bare/metadata")
    assert status == 200, body
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    shapes = {
        name: (tensor["dtype"], [int(d["size"]) for d in tensor["tensor_shape"]["dim"]])
        for group in ("inputs", "outputs")
        for name, tensor in signature[group].items()
    }
    assert shapes == {
        "input.1": ("DT_FLOAT", [-1, 4]),
        "logits": ("DT_FLOAT", [-1, 3]),
        "label": ("DT_INT64", [-1]),
    }
    # What the sessions actually run on: this build has no CUDA, so the CPU, and a warning says why.
    available = ort.get_available_providers()
    assert "runtime" not in body  # the metadata is exactly TF Serving's; the runtime is a metric
    providers = ",".join(p for p in CUDA_FIRST if p in available)
    assert (
        f'model_server_model_version_runtime{{backend="onnx",model_name="bare",providers="{providers}",version="1"}} 1.0'
        in metrics_page(server)
    )
    if "CUDAExecutionProvider" not in available:
        assert (
            "CUDAExecutionProvider was requested but this onnxruntime build does not have it" in server.log()
        )

    with grpc.insecure_channel(server.grpc_target) as channel:
        request = apis_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "bare"
        response = apis_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    signature_map = apis_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    grpc_signature = signature_map.signature_def["serving_default"]
    assert sorted(grpc_signature.inputs) == ["input.1"]
    assert sorted(grpc_signature.outputs) == ["label", "logits"]
    assert [d.size for d in grpc_signature.outputs["label"].tensor_shape.dim] == [-1]


def test_bare_onnx_predicts_over_rest_and_grpc(server: ServerProcess) -> None:
    features = np.array([[1, 2, 3, 4], [0.5, -1, 2, 0]], np.float32)
    logits = features @ WEIGHTS + BIAS
    status, body = rest(server, "/v1/models/bare:predict", {"inputs": {"input.1": features.tolist()}})
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"]["logits"], logits, rtol=1e-6)
    assert body["outputs"]["label"] == logits.argmax(axis=1).tolist()

    with grpc.insecure_channel(server.grpc_target) as channel:
        request = apis_pb2.PredictRequest(output_filter=["label"])
        request.model_spec.name = "bare"
        request.inputs["input.1"].CopyFrom(codec.from_numpy(features))
        response = apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert list(response.outputs) == ["label"]
    assert codec.to_numpy(response.outputs["label"]).tolist() == logits.argmax(axis=1).tolist()

    status, body = rest(server, "/v1/models/bare:predict", {"inputs": {"input.1": [[1, 2, 3]]}})
    assert status == 400, body  # the graph's shape [-1, 4] is enforced before the engine


def test_bare_onnx_strings_travel_as_utf8_bytes(server: ServerProcess) -> None:
    """ONNX Runtime's Python API writes a `bytes` element as its repr; the backend hands it text and
    gives the server bytes back, so strings arrive as sent (and bytes that are not UTF-8 are a 400)."""
    texts = np.array([b"caf\xc3\xa9 ok", b""], dtype=object)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = apis_pb2_grpc.PredictionServiceStub(channel)
        request = apis_pb2.PredictRequest()
        request.model_spec.name = "strings"
        request.inputs["text"].CopyFrom(codec.from_numpy(texts))
        same = codec.to_numpy(stub.Predict(request, timeout=10).outputs["same"])
        assert same.tolist() == texts.tolist()  # before: [b"b'caf\\xc3\\xa9 ok'", b"b''"]
        request.inputs["text"].CopyFrom(codec.from_numpy(np.array([b"\xff\xfe"], dtype=object)))
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in (raised.value.details() or "")
    status, body = rest(server, "/v1/models/strings:predict", {"instances": ["mixed Case é"]})
    assert (status, body) == (200, {"predictions": ["mixed Case é"]})


@pytest.mark.skipif(not HAS_TENSORFLOW, reason="the tf extra is not installed")
def test_bare_saved_model_is_served_by_tensorflow(server: ServerProcess) -> None:
    status, body = rest(server, "/v1/models/affine:predict", {"instances": [[1, 2, 3], [0, 0, 1]]})
    assert status == 200, body
    expected = np.array([[1, 2, 3], [0, 0, 1]], np.float32) @ np.array(AFFINE_W) + np.array(AFFINE_B)
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-6)
    status, body = rest(server, "/v1/models/affine/metadata")
    assert status == 200 and "runtime" not in body
    assert 'model_server_model_version_runtime{backend="tensorflow",model_name="affine",providers="",version="1"} 1.0' in (
        metrics_page(server)
    )
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [int(d["size"]) for d in signature["inputs"]["x"]["tensor_shape"]["dim"]] == [-1, 3]
    assert "served by the tensorflow backend (its files; --backend is onnx)" in server.log()


# ----------------------------------------------------------------------- a server without TensorFlow


@pytest.fixture(scope="module")
def no_tf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("no-tf")
    shadow = root / "shadow"
    shadow.mkdir()
    (shadow / "tensorflow.py").write_text(
        "raise ImportError(\"No module named 'tensorflow' (hidden by the test)\")\n"
    )
    saved_model = root / "models" / "savedmodel" / "1"
    saved_model.mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"")  # never read: TensorFlow is missing first
    write_bare_onnx(root / "models" / "gpu_only" / "1")
    config = write_config(
        root / "models.config",
        {name: root / "models" / name for name in ("savedmodel", "gpu_only")},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(shadow))  # the child's environment only: restored at once
        process = start_server(
            [
                "--model_config_file",
                str(config),
                "--onnx_providers=" + ",".join(CUDA_FIRST),
                "--onnx_require_accelerator",
            ],
            root / "server.log",
            wait_serving=False,
        )
    yield process
    assert process.stop() == 0, process.log()


def test_bare_saved_model_without_tensorflow_says_what_to_do(no_tf_server: ServerProcess) -> None:
    status = version_status(no_tf_server, "savedmodel", 50)  # END
    assert status.status.error_code == 2  # UNKNOWN, as TF Serving reports load failures
    message = status.status.error_message
    assert "needs TensorFlow, and TensorFlow cannot be imported here" in message
    assert "pip install 'model-serving[tf]'" in message and "python -m export convert" in message


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this build has CUDA")
def test_required_accelerator_fails_the_load_instead_of_using_the_cpu(no_tf_server: ServerProcess) -> None:
    status = version_status(no_tf_server, "gpu_only", 50)
    assert "--onnx_require_accelerator: none of CUDAExecutionProvider is in this onnxruntime build" in (
        status.status.error_message
    )


# --------------------------------------------------------------------------------- pure functions


def test_version_platform_per_folder(tmp_path: Path) -> None:
    def folder(name: str, *files: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        for file in files:
            (path / file).write_bytes(b"")
        return path

    export = folder("export", "manifest.json", "model.onnx", "saved_model.pb")
    bare_onnx = folder("bare_onnx", "model.onnx")
    bare_saved_model = folder("bare_saved_model", "saved_model.pb")
    copying = folder("copying", "model.onnx", "saved_model.pb")
    empty = folder("empty")
    assert [version_platform(p, "onnx") for p in (export, bare_onnx, bare_saved_model, copying, empty)] == [
        "onnx",
        "onnx",
        "tensorflow",
        None,  # an export being copied: waits for its manifest
        None,
    ]
    assert [
        version_platform(p, "tensorflow") for p in (export, bare_onnx, bare_saved_model, copying, empty)
    ] == [
        "tensorflow",
        "onnx",
        "tensorflow",
        "tensorflow",
        None,
    ]


def test_providers_cpu_build() -> None:
    choice = choose_providers(CUDA_FIRST, CPU_BUILD)
    assert choice.providers == ("CPUExecutionProvider",)
    assert len(choice.warnings) == 1 and "CUDAExecutionProvider was requested" in choice.warnings[0]
    assert choose_providers([], CPU_BUILD).providers == ("CPUExecutionProvider",)
    assert choose_providers(["CPUExecutionProvider"], CPU_BUILD).warnings == ()
    with pytest.raises(
        ProviderUnavailable, match="none of CUDAExecutionProvider is in this onnxruntime build"
    ):
        choose_providers(CUDA_FIRST, CPU_BUILD, require_accelerator=True)
    with pytest.raises(ProviderUnavailable, match="names no accelerator"):
        choose_providers(["CPUExecutionProvider"], GPU_BUILD, require_accelerator=True)


def test_providers_gpu_build() -> None:
    assert choose_providers(CUDA_FIRST, GPU_BUILD, require_accelerator=True).providers == tuple(CUDA_FIRST)
    preferred = ["TensorrtExecutionProvider", *CUDA_FIRST, "CUDAExecutionProvider"]
    assert choose_providers(preferred, GPU_BUILD).providers == tuple(GPU_BUILD)  # order kept, no repeats
    # The session got what it asked for: nothing to say.
    assert check_session_providers(CUDA_FIRST, CUDA_FIRST, require_accelerator=True) is None
    # CUDA listed by the build but not initialised (no device, libcudnn missing): ONNX Runtime
    # carries on with the CPU. A warning, or a failed load when an accelerator is required.
    warning = check_session_providers(CUDA_FIRST, ["CPUExecutionProvider"])
    assert warning is not None and "could not initialise CUDAExecutionProvider" in warning
    assert "running on CPUExecutionProvider" in warning
    with pytest.raises(ProviderUnavailable, match="could not initialise CUDAExecutionProvider"):
        check_session_providers(CUDA_FIRST, ["CPUExecutionProvider"], require_accelerator=True)
    # TensorRT dropped but CUDA kept: still an accelerator, so a warning only.
    kept = check_session_providers(GPU_BUILD, CUDA_FIRST, require_accelerator=True)
    assert kept is not None and "TensorrtExecutionProvider" in kept
