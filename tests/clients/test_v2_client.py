"""The Open Inference Protocol clients' own calls, and `ml-client --protocol v2`, against a real server.

The TF Serving-shaped calls (predict, classify, metadata, status) run for the V2 clients in
`test_clients.py` beside GrpcClient and RestClient; here: live/ready, server and model metadata,
`infer` with its parameters, the repository extension, the CLI, and the pure encoders.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clients.errors import ClientError
from clients.v2_client import (
    HEADER_LENGTH,
    V2Client,
    V2GrpcClient,
    V2RestClient,
    decode_infer_answer,
    decode_infer_response,
    encode_infer_body,
    parse_classes,
    version_string,
)
from serving import codec
from serving.proto import inference_pb2
from tests.serving.fixtures import REPO_ROOT, ServerProcess, reference_probabilities

pytestmark = pytest.mark.slow


@pytest.fixture(params=["grpc", "rest", "rest-json"])
def v2(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[V2Client]:
    made: V2Client = (
        V2GrpcClient(server.grpc_target, timeout=10)
        if request.param == "grpc"
        else V2RestClient(server.rest_url, binary=request.param == "rest", timeout=10)
    )
    with made:
        yield made


def test_health_and_metadata(v2: V2Client) -> None:
    assert v2.live() and v2.ready() and v2.ready("digits") and v2.ready("digits", "1")
    with pytest.raises(ClientError) as raised:  # unknown: an error, not "not ready"
        v2.ready("digits", "9")
    assert raised.value.code == "NOT_FOUND"
    server = v2.server_metadata()
    assert server["name"] == "model-serving" and "classification" in server["extensions"]
    described = v2.model_metadata("catdog.explain")
    assert described["name"] == "catdog.explain" and described["versions"] == ["1"]
    assert described["properties"]["signature"] == "explain"
    assert described["properties"]["signatures"].split(",") == ["explain", "predict_image_bytes", "serving_default"]
    assert {o["name"] for o in described["outputs"]} == {"heatmap", "probabilities"}


def test_infer_with_parameters_outputs_and_versions(v2: V2Client, models_dir: Path) -> None:
    images = np.random.default_rng(3).uniform(0, 255, size=(2, 28, 28, 1)).astype(np.float32)
    expected = reference_probabilities(models_dir / "digits" / "1", images)
    for version in ("", "1"):
        answer = v2.infer("digits", {"image": images}, version=version, request_id="r-1")
        np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-4, atol=1e-6)
    top = v2.infer("digits", {"image": images}, outputs=[("probabilities", {"classification": 2})])["probabilities"]
    assert top.dtype == codec.STRING and top.shape == (2, 2)
    assert [int(t.split(b":")[1]) for t in top[:, 0]] == expected.argmax(axis=1).tolist()
    texts = np.array([b"great fun", b"dull, awful and bad"], dtype=object)
    sentiment = v2.infer("sentiment", {"text": texts})["probabilities"]
    assert sentiment.shape == (2, 2) and sentiment.argmax(axis=1).tolist() == [1, 0]
    with pytest.raises(ClientError) as raised:
        v2.infer("digits", {"image": images}, version="9")
    assert (raised.value.code, raised.value.http_status) == ("NOT_FOUND", 404)
    with pytest.raises(ClientError) as raised:
        v2.infer("digits", {"image": images}, parameters={"signature_name": "nope"})
    assert raised.value.http_status == 400


def test_repository_load_and_unload_a_second_model(v2: V2Client, models_dir: Path) -> None:
    name = f"copy-{type(v2).__name__.lower()}-{getattr(v2, 'binary', 'grpc')}"
    v2.load(name, {"base_path": str(models_dir / "digits")})
    try:
        assert {"name": name, "version": "1", "state": "READY", "reason": ""} in v2.repository_index()
        assert v2.ready(name)
        assert v2.status(name)[0].state == "AVAILABLE"
        assert v2.predict(name, {"image": np.zeros((1, 28, 28, 1), np.float32)})["probabilities"].shape == (1, 10)
    finally:
        v2.unload(name)
    assert {"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in v2.repository_index()
    with pytest.raises(ClientError) as raised:
        v2.predict(name, {"image": np.zeros((1, 28, 28, 1), np.float32)})
    assert raised.value.code == "NOT_FOUND"
    with pytest.raises(ClientError) as raised:
        v2.load("never-served")
    assert raised.value.code == "NOT_FOUND"


def test_status_of_a_label_and_errors(v2: V2Client) -> None:
    with pytest.raises(ClientError) as raised:
        v2.status("digits", label="stable")  # the tiny server assigns no labels
    assert raised.value.code in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION")
    with pytest.raises(ClientError) as raised:
        v2.status("nope")
    assert (raised.value.code, raised.value.http_status) == ("NOT_FOUND", 404)
    with pytest.raises(ClientError) as raised:
        v2.classify("sentiment", [])
    assert raised.value.code == "INVALID_ARGUMENT"


def test_cli_speaks_v2_over_both_transports(server: ServerProcess, digit_png: Path, red_jpeg: Path) -> None:
    flags = ["--protocol", "v2", "--target", server.grpc_target, "--url", server.rest_url, "--timeout", "10"]
    answers = []
    for transport in ([], ["--rest"]):
        done = subprocess.run(
            [sys.executable, "-m", "clients", *flags, *transport, "predict", "--model", "digits", str(digit_png)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        answers.append(done.stdout)
    tf_serving = subprocess.run(
        [sys.executable, "-m", "clients", *flags[2:], "predict", "--model", "digits", str(digit_png)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert answers == [tf_serving.stdout, tf_serving.stdout] and answers[0].startswith("seven.png\n")
    done = subprocess.run(
        [sys.executable, "-m", "clients", *flags, "--rest", "metadata", "--model", "catdog"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sorted(json.loads(done.stdout)["signatures"]) == ["explain", "predict_image_bytes", "serving_default"]
    done = subprocess.run(
        [sys.executable, "-m", "clients", *flags, "status", "--model", "nope"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("ml-client: NOT_FOUND: ")


# -- pure pieces -----------------------------------------------------------------------------------


def test_binary_body_round_trips_and_json_falls_back_to_binary_for_photos() -> None:
    image = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    photo = np.array([b"\xff\xd8 not utf-8 \xff"], dtype=object)
    body, headers = encode_infer_body({"image": image, "photo": photo}, binary=False, outputs=[("p", {"classification": 3})])
    header = json.loads(body[: int(headers[HEADER_LENGTH])])
    image_entry, photo_entry = header["inputs"]
    assert image_entry == {"name": "image", "datatype": "FP32", "shape": [1, 2, 3], "data": [0, 1, 2, 3, 4, 5]}
    assert photo_entry["parameters"] == {"binary_data_size": 4 + len(photo[0])}
    assert header["outputs"] == [{"name": "p", "parameters": {"classification": 3}}]
    assert "parameters" not in header  # JSON: no binary_data_output asked for
    body, headers = encode_infer_body({"image": image})
    assert json.loads(body[: int(headers[HEADER_LENGTH])])["parameters"] == {"binary_data_output": True}
    answer_json = json.dumps(
        {"outputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
                     {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    ).encode()  # fmt: skip
    decoded = decode_infer_answer(
        answer_json + np.array([1.5, 2.5], "<f4").tobytes(), str(len(answer_json)), 200
    )
    np.testing.assert_array_equal(decoded["a"], [[1.5, 2.5]])
    assert decoded["b"].tolist() == [b"x"]
    with pytest.raises(ClientError):
        decode_infer_answer(b"not json", None, 200)


def test_classes_and_versions() -> None:
    values = np.array([[b"0.700000:1:dog", b"0.300000:0:cat"]], dtype=object)
    assert parse_classes(values) == [[("cat", 0.3), ("dog", 0.7)]]
    assert parse_classes(np.array([["0.5:2", "0.25:0"]], dtype=object)) == [[("0", 0.25), ("2", 0.5)]]
    with pytest.raises(ClientError):
        parse_classes(np.array([[b"garbage"]], dtype=object))
    assert (version_string(None, None), version_string(3, None), version_string(None, "stable")) == ("", "3", "stable")
    with pytest.raises(ClientError):
        version_string(3, "stable")


def test_grpc_answers_in_typed_contents_or_raw() -> None:
    """Servers that answer typed `contents` (not raw bytes) decode the same; a shape the values do
    not fill is an INTERNAL error, not an allocation of what the shape claims."""
    answer = inference_pb2.ModelInferResponse()
    scores = answer.outputs.add(name="scores", datatype="FP32", shape=[1, 3])
    scores.contents.fp32_contents.extend([0.5, 0.25, 0.25])
    tags = answer.outputs.add(name="tags", datatype="BYTES", shape=[2])
    tags.contents.bytes_contents.extend([b"a", b"\xff"])
    decoded = decode_infer_response(answer)
    assert decoded["scores"].dtype == np.float32 and decoded["scores"].tolist() == [[0.5, 0.25, 0.25]]
    assert decoded["tags"].tolist() == [b"a", b"\xff"]
    raw = inference_pb2.ModelInferResponse()
    raw.outputs.add(name="scores", datatype="FP32", shape=[1, 3])
    raw.raw_output_contents.append(np.array([0.5, 0.25, 0.25], "<f4").tobytes())
    np.testing.assert_array_equal(decode_infer_response(raw)["scores"], decoded["scores"])
    tags.shape[0] = 10**12  # claims a trillion strings
    with pytest.raises(ClientError) as raised:
        decode_infer_response(answer)
    assert raised.value.code == "INTERNAL" and "needs 1000000000000 values, got 2" in raised.value.message
