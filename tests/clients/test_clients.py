"""The four clients against a real server: same answers, same errors, method for method.

`GrpcClient` and `RestClient` speak TF Serving's API; `V2GrpcClient` and `V2RestClient` (binary
tensor data, and JSON) the Open Inference Protocol, to the same process.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from clients.base import Client, ModelStatus
from clients.errors import ClientError, code_for_http_status
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient
from clients.v2_client import V2GrpcClient, V2RestClient
from tests.serving.fixtures import ServerProcess, reference_probabilities

pytestmark = pytest.mark.slow


KINDS = ("grpc", "rest", "v2-grpc", "v2-rest", "v2-rest-json")


def make_client(kind: str, server: ServerProcess) -> Client:
    return {
        "grpc": lambda: GrpcClient(server.grpc_target, timeout=10),
        "rest": lambda: RestClient(server.rest_url, timeout=10),
        "v2-grpc": lambda: V2GrpcClient(server.grpc_target, timeout=10),
        "v2-rest": lambda: V2RestClient(server.rest_url, timeout=10),
        "v2-rest-json": lambda: V2RestClient(server.rest_url, binary=False, timeout=10),
    }[kind]()


@pytest.fixture(params=KINDS)
def client(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Client]:
    with make_client(request.param, server) as made:
        yield made


@pytest.fixture
def every(server: ServerProcess) -> Iterator[list[Client]]:
    clients = [make_client(kind, server) for kind in KINDS]
    yield clients
    for made in clients:
        made.close()


def _images(count: int, seed: int = 0) -> np.ndarray:
    return (
        np.random.default_rng(seed).uniform(0, 255, size=(count, 28, 28, 1)).astype(np.float32)
    )  # [N,28,28,1]


def test_predict_matches_the_model(client: Client, models_dir: Path) -> None:
    images = _images(3)
    outputs = client.predict("digits", {"image": images})
    assert list(outputs) == ["probabilities"]
    probabilities = outputs["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 10)
    np.testing.assert_allclose(
        probabilities, reference_probabilities(models_dir / "digits" / "1", images), rtol=1e-4, atol=1e-6
    )


def test_every_client_gives_the_same_answers(every: list[Client], red_jpeg: Path) -> None:
    images = _images(2, seed=5)
    first, *others = [c.predict("digits", {"image": images})["probabilities"] for c in every]
    for other in others:
        np.testing.assert_array_equal(first, other)
    classes = [c.classify("digits", [{"image": images[0]}, {"image": images[1]}]) for c in every]
    for other in classes[1:]:
        assert [[label for label, _ in row] for row in other] == [[label for label, _ in row] for row in classes[0]]
        np.testing.assert_allclose([[s for _, s in row] for row in other], [[s for _, s in row] for row in classes[0]], atol=1e-6)
    metadata = [c.metadata("catdog") for c in every]
    assert all(m == metadata[0] for m in metadata), metadata
    assert all(c.status("digits") == [ModelStatus(1, "AVAILABLE", None)] for c in every)

    texts = ["great fun", "dull, awful and bad"]
    first, *others = [c.predict("sentiment", {"text": texts})["probabilities"] for c in every]
    for other in others:
        np.testing.assert_array_equal(first, other)
    assert first.argmax(axis=1).tolist() == [1, 0]

    photo = np.array([red_jpeg.read_bytes()], dtype=object)  # [1] encoded JPEG
    explained = [c.predict("catdog", {"image_bytes": photo}, signature="explain") for c in every]
    for outputs in explained:
        assert sorted(outputs) == ["heatmap", "probabilities"]
        assert outputs["heatmap"].dtype == np.float32 and outputs["heatmap"].shape == (1, 4, 4)
        assert outputs["heatmap"].min() >= 0.0 and outputs["heatmap"].max() <= 1.0
    for outputs in explained[1:]:
        np.testing.assert_array_equal(explained[0]["heatmap"], outputs["heatmap"])
    filtered = [
        c.predict("catdog", {"image_bytes": photo}, signature="explain", output_filter=["heatmap"])
        for c in every
    ]
    assert [list(f) for f in filtered] == [["heatmap"]] * len(every)


def test_classify_returns_server_labels(client: Client, red_jpeg: Path) -> None:
    (classes,) = client.classify(
        "catdog", [{"image_bytes": red_jpeg.read_bytes()}], signature="predict_image_bytes"
    )
    assert [label for label, _ in classes] == ["cat", "dog"]
    assert classes[0][1] > 0.9 and abs(sum(score for _, score in classes) - 1) < 1e-5


def test_metadata_is_plain_dicts(client: Client) -> None:
    metadata = client.metadata("digits", version=1)
    assert metadata == {
        "name": "digits",
        "version": 1,
        "signatures": {
            "serving_default": {
                "method": "tensorflow/serving/predict",
                "inputs": {"image": {"dtype": "float32", "shape": [-1, 28, 28, 1]}},
                "outputs": {"probabilities": {"dtype": "float32", "shape": [-1, 10]}},
            }
        },
    }


@pytest.mark.parametrize(
    ("call", "code", "http_status"),
    [
        (lambda c: c.predict("nope", {"image": _images(1)}), "NOT_FOUND", 404),
        (lambda c: c.status("nope"), "NOT_FOUND", 404),
        (lambda c: c.metadata("digits", version=9), "NOT_FOUND", 404),
        (lambda c: c.predict("digits", {"image": _images(1)}, signature="nope"), "FAILED_PRECONDITION", 400),
        (lambda c: c.predict("digits", {"image": _images(1)[:, :14]}), "INVALID_ARGUMENT", 400),
        (lambda c: c.predict("digits", {"pixels": _images(1)}), "INVALID_ARGUMENT", 400),
        (
            lambda c: c.predict(
                "catdog", {"image_bytes": [b"not an image"]}, signature="predict_image_bytes"
            ),
            "INVALID_ARGUMENT",
            400,
        ),
    ],
)
def test_server_errors_become_one_exception(
    client: Client, call: Callable[[Client], object], code: str, http_status: int
) -> None:
    with pytest.raises(ClientError) as raised:
        call(client)
    if isinstance(client, RestClient | V2RestClient):
        # HTTP carries only the status: 400 reads back as INVALID_ARGUMENT, whichever code made it.
        code = code_for_http_status(http_status)
    assert (raised.value.code, raised.value.http_status) == (code, http_status)
    assert raised.value.message


def test_requests_that_cannot_be_built_fail_before_sending(client: Client) -> None:
    with pytest.raises(ClientError) as raised:
        client.status("digits", version=1, label="stable")
    assert raised.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ClientError) as raised:
        client.predict("digits", {"image": np.array([["2026-11-27"]], dtype="datetime64[s]")})
    assert raised.value.code == "INVALID_ARGUMENT"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_server_is_unavailable() -> None:
    port = _free_port()
    for client in (
        GrpcClient(f"127.0.0.1:{port}", timeout=2),
        RestClient(f"http://127.0.0.1:{port}", timeout=2),
        V2GrpcClient(f"127.0.0.1:{port}", timeout=2),
        V2RestClient(f"http://127.0.0.1:{port}", timeout=2),
    ):
        with client, pytest.raises(ClientError) as raised:
            client.status("digits")
        assert raised.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_round_robin_targets(server: ServerProcess) -> None:
    """An ipv4 address list (and a dns:/// name when it resolves offline) balances over every address."""
    images = _images(1)
    targets = [f"ipv4:127.0.0.1:{server.grpc_port},127.0.0.1:{server.grpc_port}"]
    try:
        socket.getaddrinfo("localhost", server.grpc_port)
        targets.append(f"dns:///localhost:{server.grpc_port}")
    except OSError:
        pass
    for target in targets:
        with GrpcClient(target, timeout=10) as client:
            for _ in range(4):
                assert client.predict("digits", {"image": images})["probabilities"].shape == (1, 10)


def test_tls_needs_a_readable_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ClientError) as raised:
        GrpcClient("127.0.0.1:1", tls=True, root_certificates=tmp_path / "missing.pem")
    assert raised.value.code == "INVALID_ARGUMENT" and "missing.pem" in raised.value.message
