"""The real server process over loopback gRPC: answers, metadata, status, and every error code.

Uses a tiny ONNX softmax regression (no TensorFlow), so the whole module runs in a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc, example_pb2, tensor_pb2
from tests.serving.fixtures import (
    ServerProcess,
    reference_probabilities,
    start_server,
    write_config,
    write_tiny_version,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "tiny"
    write_tiny_version(base, 1, seed=1)
    write_tiny_version(base, 2, seed=2)
    return base


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = write_config(
        tmp_path_factory.mktemp("config") / "models.config",
        {"tiny": repo},
        extra="    model_version_policy { all {} }\n    version_labels { key: 'stable' value: 1 }\n",
    )
    process = start_server(
        ["--model_config_file", str(config), "--grpc_max_message_bytes", str(4 << 20)],
        tmp_path_factory.mktemp("log") / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()
    assert "internal error" not in process.log()  # every bad request above was caught as a ServingError


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[apis_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(
        server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        yield apis_pb2_grpc.PredictionServiceStub(channel)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 1)).astype(np.float32)


def predict_request(inputs: dict[str, np.ndarray], **spec: object) -> apis_pb2.PredictRequest:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = str(spec.pop("name", "tiny"))
    if "version" in spec:
        request.model_spec.version.value = int(spec.pop("version"))  # type: ignore[call-overload]
    if "label" in spec:
        request.model_spec.version_label = str(spec.pop("label"))
    request.model_spec.signature_name = str(spec.pop("signature", ""))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(codec.from_numpy(value))
    return request


def test_predict_matches_the_model(stub: apis_pb2_grpc.PredictionServiceStub, repo: Path) -> None:
    batch = images(5)
    response = stub.Predict(predict_request({"image": batch}), timeout=10)
    probabilities = codec.to_numpy(response.outputs["probabilities"])
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, reference_probabilities(repo / "2", batch), atol=1e-5)
    assert response.model_spec.name == "tiny" and response.model_spec.version.value == 2  # newest serves
    assert response.model_spec.signature_name == "serving_default"


def test_version_and_label_pick_the_version(stub: apis_pb2_grpc.PredictionServiceStub, repo: Path) -> None:
    batch = images(2, seed=3)
    by_version = stub.Predict(predict_request({"image": batch}, version=1), timeout=10)
    by_label = stub.Predict(predict_request({"image": batch}, label="stable"), timeout=10)
    expected = reference_probabilities(repo / "1", batch)
    for response in (by_version, by_label):
        assert response.model_spec.version.value == 1
        np.testing.assert_allclose(codec.to_numpy(response.outputs["probabilities"]), expected, atol=1e-5)


def test_large_requests_read_in_place_answer_and_fail_as_any_other(
    server: ServerProcess, stub: apis_pb2_grpc.PredictionServiceStub, repo: Path
) -> None:
    """Over 64 KiB of tensor_content is read in place (serving.protocol.grpc.inplace): same answers,
    same errors, and concatenated messages merge as protobuf merges them."""
    batch, other = images(40, seed=5), images(40, seed=6)  # 125 KB of float32 pixels each
    response = stub.Predict(predict_request({"image": batch}), timeout=10)
    np.testing.assert_allclose(
        codec.to_numpy(response.outputs["probabilities"]), reference_probabilities(repo / "2", batch), atol=1e-5
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        raw_predict = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=None,
            response_deserializer=apis_pb2.PredictResponse.FromString,
        )
        # The second message's image replaces the first's, its version spec is merged in.
        merged = predict_request({"image": batch}).SerializeToString()
        merged += predict_request({"image": other}, version=1).SerializeToString()
        response = raw_predict(merged, timeout=10)
        assert response.model_spec.version.value == 1
        np.testing.assert_allclose(
            codec.to_numpy(response.outputs["probabilities"]), reference_probabilities(repo / "1", other), atol=1e-5
        )
        code, details = _code(lambda: raw_predict(merged[: len(merged) - 100], timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid tensorflow.serving.PredictRequest" in details
    short = predict_request({"image": batch})
    short.inputs["image"].tensor_content = short.inputs["image"].tensor_content[:-4]
    code, details = _code(lambda: stub.Predict(short, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tensor_content has 125436 bytes" in details, details
    poisoned = batch.copy()
    poisoned[39, 27, 27, 0] = np.nan
    code, details = _code(lambda: stub.Predict(predict_request({"image": poisoned}), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in details


def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _huge_shape() -> tensor_pb2.TensorProto:
    return _shaped(tensor_pb2.DT_FLOAT, (1_000_000, 28, 28, 1), float_val=[0.0])


def _shaped(dtype: int, dims: tuple[int, ...], **values: list[object]) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    for name, items in values.items():
        getattr(proto, name).extend(items)
    return proto


# Shapes whose arithmetic overflows, or huge dims beside a zero dim: numpy would raise
# "array is too big" or "cannot reshape array of size 0 into shape (...)"; the answer must be
# INVALID_ARGUMENT naming the shape, before any numpy call.
OVERFLOWING_SHAPES = {
    "product over 2**63": (tensor_pb2.DT_FLOAT, (2**31, 2**31, 2**31, 1), {}),
    "huge dims beside a zero dim": (tensor_pb2.DT_FLOAT, (2**31, 2**31, 2**31, 0), {}),
    "zero then huge, with values": (tensor_pb2.DT_FLOAT, (0, 2**40, 28, 1), {"float_val": [1.0]}),
    "huge dim, tensor_content empty": (tensor_pb2.DT_FLOAT, (2**62, 28, 28, 1), {}),
    "strings, huge with zero": (tensor_pb2.DT_STRING, (0, 2**62), {"string_val": [b"x"]}),
    "int64 max dims": (tensor_pb2.DT_INT64, (2**63 - 1, 2), {}),
    "rank 40": (tensor_pb2.DT_FLOAT, (1,) * 40, {"float_val": [1.0]}),
}


@pytest.mark.parametrize("case", sorted(OVERFLOWING_SHAPES))
def test_overflowing_shapes_are_invalid_argument(case: str, stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    dtype, dims, values = OVERFLOWING_SHAPES[case]
    request = predict_request({})
    request.inputs["image"].CopyFrom(_shaped(dtype, dims, **values))
    code, details = _code(lambda: stub.Predict(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "limit" in details
    assert stub.Predict(predict_request({"image": images(1)}), timeout=10).outputs


BAD_REQUESTS = {
    "unknown model": (
        lambda: predict_request({"image": images(1)}, name="nope"),
        grpc.StatusCode.NOT_FOUND,
        "nope",
    ),
    "unknown version": (
        lambda: predict_request({"image": images(1)}, version=9),
        grpc.StatusCode.NOT_FOUND,
        "version 9",
    ),
    "unknown label": (
        lambda: predict_request({"image": images(1)}, label="canary"),
        grpc.StatusCode.NOT_FOUND,
        "canary",
    ),
    "unknown signature": (  # TF Serving's code and words (predict_util.cc)
        lambda: predict_request({"image": images(1)}, signature="explain"),
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "explain" not found.',
    ),
    "wrong input name": (
        lambda: predict_request({"pixels": images(1)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown input(s) ['pixels']",
    ),
    "wrong dtype": (
        lambda: predict_request({"image": images(1).astype(np.float64)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be float32, got float64",
    ),
    "wrong rank": (
        lambda: predict_request({"image": np.zeros((1, 28, 28), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rank 4",
    ),
    "wrong shape": (
        lambda: predict_request({"image": np.zeros((1, 28, 28, 3), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "[N, 28, 28, 1]",
    ),
    "empty batch": (
        lambda: predict_request({"image": np.zeros((0, 28, 28, 1), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty batch",
    ),
    "NaN pixels": (
        lambda: predict_request({"image": np.full((1, 28, 28, 1), np.nan, np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    "no inputs": (lambda: predict_request({}), grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
    "string for float": (
        lambda: predict_request({"image": np.array([b"x"], dtype=object)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be float32, got string",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    case: str, stub: apis_pb2_grpc.PredictionServiceStub
) -> None:
    build, want, fragment = BAD_REQUESTS[case]
    code, details = _code(lambda: stub.Predict(build(), timeout=10))
    assert code == want, details
    assert fragment in details
    assert stub.Predict(predict_request({"image": images(1)}), timeout=10).outputs["probabilities"]


def test_oversized_tensor_and_oversized_message(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = predict_request({})
    request.inputs["image"].CopyFrom(_huge_shape())
    code, details = _code(lambda: stub.Predict(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit" in details
    # 6 MB of pixels is over this server's 4 MiB --grpc_max_message_bytes: refused by gRPC itself.
    code, _ = _code(lambda: stub.Predict(predict_request({"image": images(2000)}), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Predict(predict_request({"image": images(1)}), timeout=10).outputs


def test_output_filter(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = predict_request({"image": images(1)})
    request.output_filter.append("probabilities")
    assert list(stub.Predict(request, timeout=10).outputs) == ["probabilities"]
    request.output_filter[:] = ["heatmap"]
    code, details = _code(lambda: stub.Predict(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "heatmap" in details


def test_metadata_returns_signature_defs(stub: apis_pb2_grpc.PredictionServiceStub) -> None:
    request = apis_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 2
    signature_map = apis_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    image = signature.inputs["image"]
    assert image.dtype == tensor_pb2.DT_FLOAT and [d.size for d in image.tensor_shape.dim] == [-1, 28, 28, 1]
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]
    request.metadata_field[:] = ["everything"]
    code, _ = _code(lambda: stub.GetModelMetadata(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_classify_with_examples(stub: apis_pb2_grpc.PredictionServiceStub, repo: Path) -> None:
    batch = images(3, seed=5)
    request = apis_pb2.ClassificationRequest()
    request.model_spec.name = "tiny"
    for image in batch:
        example = example_pb2.Example()
        example.features.feature["image"].float_list.value.extend(image.reshape(-1).tolist())
        request.input.example_list.examples.append(example)
    response = stub.Classify(request, timeout=10)
    expected = reference_probabilities(repo / "2", batch)
    assert len(response.result.classifications) == 3
    for row, classes in zip(expected, response.result.classifications, strict=True):
        assert [c.label for c in classes.classes] == [str(i) for i in range(10)]
        np.testing.assert_allclose([c.score for c in classes.classes], row, atol=1e-5)
    request.input.example_list.examples[0].features.feature["image"].float_list.value.append(1.0)
    code, details = _code(lambda: stub.Classify(request, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "784 values" in details


def test_model_status_health_and_reflection(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        models = apis_pb2_grpc.ModelServiceStub(channel)
        request = apis_pb2.GetModelStatusRequest()
        request.model_spec.name = "tiny"
        states = {s.version: s.state for s in models.GetModelStatus(request, timeout=10).model_version_status}
        assert states == {1: apis_pb2.ModelVersionStatus.AVAILABLE, 2: apis_pb2.ModelVersionStatus.AVAILABLE}
        request.model_spec.name = "ghost"
        code, _ = _code(lambda: models.GetModelStatus(request, timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND
        # No config at all: TF Serving's answer (reloads are tested in test_reload.py).
        code, _ = _code(lambda: models.HandleReloadConfigRequest(apis_pb2.ReloadConfigRequest(), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT

        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name for reply in replies for s in reply.list_services_response.service}
        assert {
            "tensorflow.serving.PredictionService",
            "tensorflow.serving.ModelService",
            "grpc.health.v1.Health",
        } <= services


def test_new_version_is_picked_up_and_old_one_unloaded(tmp_path: Path) -> None:
    base = tmp_path / "models" / "tiny"
    write_tiny_version(base, 1, seed=1)
    server = start_server(
        ["--model_name", "tiny", "--model_base_path", str(base), "--file_system_poll_wait_seconds", "0.2"],
        tmp_path / "server.log",
    )
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            assert (
                stub.Predict(predict_request({"image": images(1)}), timeout=10).model_spec.version.value == 1
            )
            write_tiny_version(base, 2, seed=2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if (
                    stub.Predict(predict_request({"image": images(1)}), timeout=10).model_spec.version.value
                    == 2
                ):
                    break
                time.sleep(0.1)
            else:
                pytest.fail("version 2 was never served")
            status_request = apis_pb2.GetModelStatusRequest()
            status_request.model_spec.name = "tiny"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                states = {
                    s.version: s.state
                    for s in apis_pb2_grpc.ModelServiceStub(channel)
                    .GetModelStatus(status_request)
                    .model_version_status
                }
                if states == {1: apis_pb2.ModelVersionStatus.END, 2: apis_pb2.ModelVersionStatus.AVAILABLE}:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"version 1 was not unloaded: {states}")
    finally:
        assert server.stop() == 0, server.log()


def test_broken_version_is_reported_and_health_stays_not_serving(tmp_path: Path) -> None:
    base = tmp_path / "models" / "tiny"
    version_dir = write_tiny_version(base, 1)
    (version_dir / "model.onnx").write_bytes(b"not an onnx file")
    server = start_server(
        ["--model_name", "tiny", "--model_base_path", str(base)], tmp_path / "s.log", wait_serving=False
    )
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = apis_pb2.GetModelStatusRequest()
            request.model_spec.name = "tiny"
            deadline = time.monotonic() + 20
            statuses = []
            while time.monotonic() < deadline:
                statuses = list(
                    apis_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request).model_version_status
                )
                if statuses and statuses[0].state == apis_pb2.ModelVersionStatus.END:
                    break
                time.sleep(0.1)
            assert statuses and statuses[0].state == apis_pb2.ModelVersionStatus.END
            assert "sha256" in statuses[0].status.error_message
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            # ...while the process itself is alive: liveness probes must not restart it.
            liveness = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
            assert liveness.status == health_pb2.HealthCheckResponse.SERVING
            code, _details = _code(
                lambda: apis_pb2_grpc.PredictionServiceStub(channel).Predict(
                    predict_request({"image": images(1)}), timeout=5
                )
            )
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0
