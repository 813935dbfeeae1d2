"""Digits end to end: a model trained and exported by the real pipeline, served by the real server,
called by our stubs, by TF Serving's official stubs, and over REST; and the reverse direction, our
client against a server built from TF Serving's own message classes running the SavedModel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from clients import GrpcClient, RestClient
from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import REPO_ROOT, ServerProcess, start_server

pytestmark = pytest.mark.slow
OFFICIAL = Path(__file__).with_name("official_stubs.py")


def predict(target: str, images: np.ndarray, signature: str = "") -> tuple[dict[str, np.ndarray], int]:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = signature
    request.inputs["image"].CopyFrom(codec.from_numpy(images))
    with grpc.insecure_channel(target) as channel:
        response = apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    outputs = {name: codec.to_numpy(tensor) for name, tensor in response.outputs.items()}
    return outputs, response.model_spec.version.value


@pytest.fixture(scope="module")
def onnx_server(digits_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        ["--model_name", "digits", "--model_base_path", str(digits_model_dir)],
        tmp_path_factory.mktemp("log") / "onnx.log",
    )
    yield server
    assert server.stop() == 0, server.log()


def test_our_clients_official_stubs_and_rest_agree(
    onnx_server: ServerProcess, digits_test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images = digits_test_images[0].astype(np.float32)
    ours, version = predict(onnx_server.grpc_target, images)
    assert version == 1 and ours["probabilities"].shape == (len(images), 10)
    with GrpcClient(onnx_server.grpc_target) as grpc_client:
        np.testing.assert_array_equal(
            grpc_client.predict("digits", {"image": images})["probabilities"], ours["probabilities"]
        )
    with RestClient(onnx_server.rest_url) as rest_client:
        np.testing.assert_allclose(
            rest_client.predict("digits", {"image": images})["probabilities"],
            ours["probabilities"],
            atol=1e-6,
        )
    np.testing.assert_allclose(ours["probabilities"].sum(axis=1), 1.0, atol=1e-5)

    np.save(tmp_path / "images.npy", images)
    subprocess.run(
        [
            sys.executable,
            str(OFFICIAL),
            "client",
            onnx_server.grpc_target,
            str(tmp_path / "images.npy"),
            str(tmp_path / "out.npz"),
        ],
        cwd=REPO_ROOT,
        check=True,
        timeout=180,
    )
    official = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(official["probabilities"], ours["probabilities"])
    assert int(official["version"]) == 1
    assert {"serving_default", "explain"} <= set(official["signatures"].tolist())
    assert official["input_shape"].tolist() == [-1, 28, 28, 1]
    assert official["states"].tolist() == [30]  # AVAILABLE
    assert str(official["bad_code"]) == "INVALID_ARGUMENT"
    heatmap = official["heatmap"]
    assert heatmap.shape[0] == len(images) and heatmap.ndim == 3
    assert heatmap.min() >= 0 and heatmap.max() <= 1

    body = json.dumps({"instances": images.tolist()}).encode()
    request = urllib.request.Request(f"{onnx_server.rest_url}/v1/models/digits:predict", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        rest = np.array(json.loads(response.read())["predictions"], dtype=np.float32)
    np.testing.assert_allclose(rest, ours["probabilities"], atol=1e-6)


def test_ml_client_predicts_a_digit_from_a_png(
    onnx_server: ServerProcess, digits_test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """What a new user does after `make up`: a PNG of a handwritten digit in, the digit out."""
    images, labels = digits_test_images
    answers, _ = predict(onnx_server.grpc_target, images.astype(np.float32))
    right = np.flatnonzero(answers["probabilities"].argmax(axis=1) == labels)
    assert right.size, "the tiny model got no test digit right"
    index = int(right[0])
    png = tmp_path / "digit.png"
    Image.fromarray(images[index, :, :, 0]).resize((140, 140)).save(png)  # larger, as a scan would be
    for transport in (["--target", onnx_server.grpc_target], ["--rest", "--url", onnx_server.rest_url]):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "clients",
                *transport,
                "predict",
                "--model",
                "digits",
                str(png),
                "--top",
                "1",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        top = result.stdout.strip().splitlines()[-1].split()
        assert top[0] == str(labels[index]), result.stdout


def test_our_client_against_tf_serving_message_classes(
    onnx_server: ServerProcess,
    digits_model_dir: Path,
    digits_test_images: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, str(OFFICIAL), "server", str(digits_model_dir), str(port_file)], cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() and time.monotonic() < deadline:
            assert process.poll() is None, "the official-stubs server died"
            time.sleep(0.1)
        images = digits_test_images[0].astype(np.float32)
        with GrpcClient(f"127.0.0.1:{port_file.read_text()}") as client:
            tf_answer = client.predict("digits", {"image": images})
        onnx_answer, _ = predict(onnx_server.grpc_target, images)
        np.testing.assert_allclose(tf_answer["probabilities"], onnx_answer["probabilities"], atol=1e-5)
        tf_explain, _ = predict(f"127.0.0.1:{port_file.read_text()}", images, "explain")
        onnx_explain, _ = predict(onnx_server.grpc_target, images, "explain")
        np.testing.assert_allclose(tf_explain["heatmap"], onnx_explain["heatmap"], atol=1e-4)
    finally:
        process.kill()
        process.wait()


def test_tensorflow_backend_serves_the_same_answers(
    onnx_server: ServerProcess,
    digits_model_dir: Path,
    digits_test_images: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    server = start_server(
        ["--model_name", "digits", "--model_base_path", str(digits_model_dir), "--backend", "tensorflow"],
        tmp_path / "tf.log",
        timeout=180,
    )
    try:
        images = digits_test_images[0].astype(np.float32)
        for signature, output, tolerance in (("", "probabilities", 1e-5), ("explain", "heatmap", 1e-4)):
            tf_answer, _ = predict(server.grpc_target, images, signature)
            onnx_answer, _ = predict(onnx_server.grpc_target, images, signature)
            np.testing.assert_allclose(tf_answer[output], onnx_answer[output], atol=tolerance)
    finally:
        assert server.stop() == 0, server.log()
