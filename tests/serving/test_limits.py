"""Every limit over a real server process: at the limit it is served, one past it it is refused
with a message that names the flag, and the server keeps serving.

Also the malformed-input answers that used to be INTERNAL/500: bytes that are no protobuf message,
an `output_filter` of the wrong type, a body labelled gzip that is not.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc, tensor_pb2
from tests.clients.tiny_models import write_tiny_catdog, write_tiny_sentiment
from tests.serving.fixtures import ServerProcess, start_server, write_config, write_tiny_version

pytestmark = pytest.mark.slow

ROWS = 8  # --max_request_rows
STRING_BYTES = 1000  # --max_string_bytes
IMAGE_PIXELS = 100 * 100  # --max_image_pixels
REQUEST_IMAGE_PIXELS = 15_000  # --max_request_image_pixels


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("limits")
    write_tiny_version(folder / "tiny", 1)
    write_tiny_sentiment(folder / "sentiment")
    write_tiny_catdog(folder / "catdog")
    config = write_config(
        folder / "models.config",
        {"tiny": folder / "tiny", "sentiment": folder / "sentiment", "catdog": folder / "catdog"},
    )
    process = start_server(
        [
            "--model_config_file",
            str(config),
            "--max_request_rows",
            str(ROWS),
            "--max_string_bytes",
            str(STRING_BYTES),
            "--rest_max_json_depth",
            "8",
            "--max_image_pixels",
            str(IMAGE_PIXELS),
            "--max_request_image_pixels",
            str(REQUEST_IMAGE_PIXELS),
        ],
        folder / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()
    assert "internal error" not in process.log()
    assert "Traceback" not in process.log()


def _post(server: ServerProcess, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.rest_url + path, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _predict_grpc(server: ServerProcess, model: str, name: str, tensor: tensor_pb2.TensorProto) -> grpc.RpcError | None:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[name].CopyFrom(tensor)
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        except grpc.RpcError as error:
            return error
    return None


def _texts(count: int, text: str = "a good film") -> tensor_pb2.TensorProto:
    return codec.from_numpy(np.array([text.encode()] * count, dtype=object))


def test_rows_per_request_at_and_past_the_limit(server: ServerProcess) -> None:
    assert _predict_grpc(server, "sentiment", "text", _texts(ROWS)) is None
    error = _predict_grpc(server, "sentiment", "text", _texts(ROWS + 1))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{ROWS + 1} rows, over the limit of {ROWS}" in error.details() and "--max_request_rows" in error.details()
    status, answer = _post(server, "/v1/models/tiny:predict", json.dumps({"instances": np.zeros((ROWS + 1, 28, 28, 1)).tolist()}).encode())
    assert status == 400 and "--max_request_rows" in answer["error"]


def test_a_tiny_request_declaring_many_empty_strings_is_refused_at_once(server: ServerProcess) -> None:
    # 99,000 strings and not one value: the short-list rule would fill them all with b"".
    tensor = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_STRING)
    tensor.tensor_shape.dim.add(size=99_000)
    assert tensor.ByteSize() < 40
    error = _predict_grpc(server, "sentiment", "text", tensor)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "99000 rows" in error.details()
    status, answer = _post(server, "/v1/models/sentiment:predict", json.dumps({"instances": [""] * 20_000}).encode())
    assert status == 400 and "20000 rows" in answer["error"]


def test_string_element_at_and_past_the_limit(server: ServerProcess) -> None:
    assert _predict_grpc(server, "sentiment", "text", _texts(1, "a" * STRING_BYTES)) is None
    error = _predict_grpc(server, "sentiment", "text", _texts(1, "a" * (STRING_BYTES + 1)))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--max_string_bytes" in error.details()


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _predict_images(server: ServerProcess, images: list[bytes]) -> grpc.RpcError | None:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = "catdog"
    request.model_spec.signature_name = "predict_image_bytes"
    request.inputs["image_bytes"].CopyFrom(codec.from_numpy(np.array(images, dtype=object)))
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        except grpc.RpcError as error:
            return error
    return None


def test_image_pixels_at_and_past_the_limits(server: ServerProcess) -> None:
    assert _predict_images(server, [_png(100, 100)]) is None  # at the per-image limit
    error = _predict_images(server, [_png(101, 100)])
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--max_image_pixels" in error.details()
    assert _predict_images(server, [_png(100, 100), _png(50, 100)]) is None  # 15,000: at the request limit
    error = _predict_images(server, [_png(100, 100), _png(51, 100)])
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--max_request_image_pixels" in error.details()


def test_json_depth_at_and_past_the_limit(server: ServerProcess) -> None:
    at = b'{"instances": [' + b"[" * 6 + b"1" + b"]" * 6 + b"]}"  # 8 deep: the rank is wrong, not the depth
    status, answer = _post(server, "/v1/models/tiny:predict", at)
    assert status == 400 and "rank" in answer["error"]
    past = b'{"instances": [' + b"[" * 7 + b"1" + b"]" * 7 + b"]}"
    status, answer = _post(server, "/v1/models/tiny:predict", past)
    assert status == 400 and "9 deep" in answer["error"] and "--rest_max_json_depth" in answer["error"]
    thousands = b'{"instances": ' + b"[" * 1000 + b"]" * 1000 + b"}"  # once a RecursionError (500)
    status, answer = _post(server, "/v1/models/tiny:predict", thousands)
    assert status == 400 and "1001 deep" in answer["error"]


def test_bytes_that_are_no_protobuf_message_are_invalid_argument(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tensorflow.serving.PredictRequest" in caught.value.details()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"instances": [[[[0]] * 28] * 28], "output_filter": 5}, "output_filter"),
        ({"instances": [[[[0]] * 28] * 28], "output_filter": [{"a": 1}]}, "output_filter"),
        ({"instances": [[[[0]] * 28] * 28], "signature_name": ["x"]}, "signature_name"),
    ],
)
def test_fields_of_the_wrong_type_are_400(server: ServerProcess, body: dict, fragment: str) -> None:
    status, answer = _post(server, "/v1/models/tiny:predict", json.dumps(body).encode())
    assert status == 400 and fragment in answer["error"]


def test_a_body_labelled_gzip_that_is_not_is_400_and_real_gzip_works(server: ServerProcess) -> None:
    body = json.dumps({"instances": np.zeros((1, 28, 28, 1)).tolist()}).encode()
    status, answer = _post(server, "/v1/models/tiny:predict", body, {"Content-Encoding": "gzip"})
    assert status == 400 and answer["error"]
    status, answer = _post(server, "/v1/models/tiny:predict", gzip.compress(body), {"Content-Encoding": "gzip"})
    assert status == 200 and len(answer["predictions"]) == 1


def test_limits_are_flags_with_their_defaults_in_the_help() -> None:
    from serving.config import build_parser

    text = build_parser().format_help()
    for flag in (
        "--max_request_rows",
        "--max_string_bytes",
        "--rest_max_body_bytes",
        "--rest_max_json_depth",
        "--rest_max_inflight_bytes",
        "--rest_max_connections",
        "--rest_idle_timeout_seconds",
        "--rest_body_timeout_seconds",
        "--rest_api_timeout_in_ms",
        "--grpc_max_concurrent_streams",
        "--grpc_max_concurrent_rpcs",
        "--max_image_pixels",
        "--max_request_image_pixels",
    ):
        assert flag in text


def test_readme_documents_every_limit() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for flag in ("--max_request_rows", "--rest_max_json_depth", "--rest_max_inflight_bytes", "--rest_max_connections"):
        assert flag in readme
