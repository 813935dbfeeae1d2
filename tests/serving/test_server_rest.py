"""TF Serving's REST API on the real server process, with a plain HTTP client (urllib)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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
    write_tiny_version(base, 3, seed=3)
    return base


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("config")
    config = write_config(
        folder / "models.config", {"tiny": repo}, extra="    version_labels { key: 'stable' value: 3 }\n"
    )
    (folder / "batching.config").write_text(
        "max_batch_size { value: 32 } batch_timeout_micros { value: 5000 } num_batch_threads { value: 2 }"
    )
    (folder / "monitoring.config").write_text(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }'
    )
    process = start_server(
        [
            "--model_config_file",
            str(config),
            "--enable_batching",
            "--batching_parameters_file",
            str(folder / "batching.config"),
            "--monitoring_config_file",
            str(folder / "monitoring.config"),
        ],
        folder / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()
    assert "internal error" not in process.log()


def call(
    server: ServerProcess, path: str, body: Any = None, method: str | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    status, _, answer = call_with_headers(server, path, body, method, raw)
    return status, answer


def call_with_headers(
    server: ServerProcess, path: str, body: Any = None, method: str | None = None, raw: bytes | None = None
) -> tuple[int, Any, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as error:
        text, status, headers = error.read(), error.code, error.headers
    try:
        return status, headers, json.loads(text)
    except json.JSONDecodeError:
        return status, headers, text.decode()


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 1)).astype(np.float32)


def test_status_and_metadata(server: ServerProcess) -> None:
    status, body = call(server, "/v1/models/tiny")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert call(server, "/v1/models/tiny/versions/3")[1] == body
    assert call(server, "/v1/models/tiny/labels/stable")[1] == body
    status, body = call(server, "/v1/models/tiny/metadata")
    assert status == 200 and body["model_spec"]["version"] == "3"
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]


def test_predict_row_and_columnar_formats(server: ServerProcess, repo: Path) -> None:
    batch = pixels(3)
    expected = reference_probabilities(repo / "3", batch)
    status, body = call(server, "/v1/models/tiny:predict", {"instances": batch.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], expected, atol=1e-5)
    status, body = call(server, "/v1/models/tiny/versions/3:predict", {"inputs": {"image": batch.tolist()}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"], expected, atol=1e-5)
    status, body = call(
        server,
        "/v1/models/tiny/labels/stable:predict",
        {"instances": [{"image": row} for row in batch.tolist()]},
    )
    assert status == 200
    np.testing.assert_allclose(body["predictions"], expected, atol=1e-5)


def test_concurrent_requests_are_batched(server: ServerProcess, repo: Path) -> None:
    batches = [pixels(1, seed=i) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        results = list(
            pool.map(lambda b: call(server, "/v1/models/tiny:predict", {"instances": b.tolist()}), batches)
        )
    for batch, (status, body) in zip(batches, results, strict=True):
        assert status == 200
        np.testing.assert_allclose(body["predictions"], reference_probabilities(repo / "3", batch), atol=1e-5)
    _, metrics = call(server, "/monitoring/prometheus/metrics")
    sums = [line for line in metrics.splitlines() if line.startswith("model_server_batch_size_sum")]
    counts = [line for line in metrics.splitlines() if line.startswith("model_server_batch_size_count")]
    rows, calls = float(sums[0].split()[-1]), float(counts[0].split()[-1])
    assert rows >= 24 and calls < rows, f"{calls} engine calls for {rows} rows: nothing was batched"


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/models/ghost:predict", {"instances": [1]}, 404, "ghost"),
        ("/v1/models/tiny/versions/7:predict", {"instances": [1]}, 404, "version 7"),
        ("/v1/models/tiny/versions/x:predict", {"instances": [1]}, 400, "positive integer"),
        ("/v1/models/tiny/versions/%C2%B2:predict", {"instances": [1]}, 400, "positive integer"),  # "²"
        (
            "/v1/models/tiny/versions/%EF%BC%93:predict",
            {"instances": [1]},
            400,
            "positive integer",
        ),  # full-width 3
        ("/v1/models/tiny/versions/0", None, 400, "positive integer"),
        ("/v1/models/tiny/versions/" + "9" * 30, None, 400, "positive integer"),
        ("/v1/models/tiny/labels/canary", None, 404, "canary"),
        ("/v1/models/tiny:predict", {"instances": [[1, 2]]}, 400, "rank 4"),
        ("/v1/models/tiny:predict", {"instances": [[[[1]] * 28] * 28, [[[1]] * 28]]}, 400, "cannot read"),
        ("/v1/models/tiny:predict", {"signature_name": "nope", "instances": [1]}, 400, "nope"),
        ("/v1/models/tiny:predict", {"instances": []}, 400, "non-empty"),
        ("/v1/models/tiny:predict", {"inputs": {"pixels": [1]}}, 400, "unknown input"),
        ("/v1/models/tiny:predict", {"instances": [1], "inputs": [1]}, 400, "exactly one"),
        ("/v1/models/tiny:predict", {"instances": [[[["NaN"]] * 28] * 28]}, 400, "NaN"),
        ("/v1/models/tiny:predict", {"instances": [[[["x"]] * 28] * 28]}, 400, "cannot read"),
        ("/v1/models/tiny:predict", [1, 2], 400, "JSON object"),
        ("/v1/models/tiny:regress", {"examples": []}, 400, "empty array"),  # TF Serving's words
        ("/v1/models/tiny:regress", {"examples": [{"image": [0.0] * 784}]}, 400, "[batch_size, 1]"),
        ("/v1/models/tiny:predict", None, 405, "POST"),
        ("/v1/elsewhere", None, 404, "Not Found"),
    ],
)
def test_errors_have_the_contract_status(
    server: ServerProcess, path: str, body: Any, status: int, fragment: str
) -> None:
    method = "POST" if body is not None else "GET"
    got, answer = call(server, path, body, method=method)
    assert got == status, answer
    assert fragment in answer["error"]
    assert call(server, "/v1/models/tiny:predict", {"instances": pixels(1).tolist()})[0] == 200


def test_invalid_json_is_400(server: ServerProcess) -> None:
    status, body = call(server, "/v1/models/tiny:predict", raw=b"{not json", method="POST")
    assert status == 400 and "not valid JSON" in body["error"]


def _image_text(value: str) -> bytes:
    """One 28x28x1 instance with every pixel written as `value` (over the fast path's threshold)."""
    row = "[" + ", ".join(f"[{value}]" for _ in range(28)) + "]"
    return ("[" + ", ".join([row] * 28) + "]").encode()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"instances": [' + _image_text("NaN") + b"]}", "NaN and Infinity are not JSON numbers"),
        (b'{"instances": [' + _image_text("-Infinity") + b"]}", "NaN and Infinity are not JSON numbers"),
        (b'{"inputs": {"image": [' + _image_text("Infinity") + b"]}}", "NaN and Infinity"),
        (b'{"instances": [' + _image_text("1e400") + b"]}", "infinity"),  # past float64
        (b'{"instances": [' + _image_text("1" + "0" * 400) + b"]}", "infinity"),  # a 400-digit integer
        (b'{"instances": [' + _image_text("1e39") + b"]}", "NaN or infinite"),  # past float32
        (b'{"instances": [' + _image_text("1") + b"2]}", "not valid JSON"),  # "]2": caught off the fast path
        (b'{"instances": [' + _image_text("01") + b"]}", "not valid JSON"),
        (b'{"instances": [' + _image_text("1") + b",]}", "not valid JSON"),
        (b'{"signature_name": "\\ud800", "instances": [1]}', "surrogate"),  # a lone surrogate
        (b'{"instances": ["\\udc00"]}', "surrogate"),
        (b'{"instances": [1], "x": "\xff"}', "UTF-8"),  # invalid UTF-8
        (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "depth"),  # orjson's 1024 levels
        (b'{"instances": ' + b"[" * 70 + b"1" + b"]" * 70 + b"}", "71 deep"),  # past --rest_max_json_depth
        (b'{"instances": ' + b"[" * 63 + b"1" + b"]" * 63 + b"}", "rank 4"),  # 64 deep, at the limit
        (b'{"instances": ' + b"[" * 40 + b"1," * 3000 + b"1" + b"]" * 40 + b"}", "rank 4"),
    ],
)
def test_json_edge_cases_are_400(server: ServerProcess, raw: bytes, fragment: str) -> None:
    status, body = call(server, "/v1/models/tiny:predict", raw=raw, method="POST")
    assert status == 400, body
    assert fragment in body["error"], body
    assert call(server, "/v1/models/tiny:predict", {"instances": pixels(1).tolist()})[0] == 200


def test_integers_past_64_bits_read_as_floats(server: ServerProcess, repo: Path) -> None:
    # As with json before: a float32 input takes 2**64 as 1.8e19 (orjson reads it as a float).
    raw = b'{"instances": [' + _image_text(str(2**64)) + b"]}"
    status, body = call(server, "/v1/models/tiny:predict", raw=raw, method="POST")
    assert status == 200, body
    expected = reference_probabilities(repo / "3", np.full((1, 28, 28, 1), 2.0**64, np.float32))
    np.testing.assert_allclose(body["predictions"], expected, atol=1e-5)


def test_answers_are_json_typed_as_tf_serving_types_them(server: ServerProcess) -> None:
    """`Content-Type: application/json` exactly (no charset: JSON is UTF-8, RFC 8259), as TF Serving,
    Triton and KServe answer; KServe's SDK reads error messages only under that exact type."""
    status, headers, body = call_with_headers(
        server, "/v1/models/tiny:predict", {"instances": pixels(2).tolist()}
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert np.asarray(body["predictions"]).shape == (2, 10)
    status, headers, body = call_with_headers(server, "/v1/models/ghost")
    assert status == 404 and headers["Content-Type"] == "application/json"


def test_wrong_methods_are_405_with_allow(server: ServerProcess) -> None:
    for path, method, allowed in [
        ("/v1/models/tiny:predict", "GET", "POST"),
        ("/v1/models/tiny:classify", "PUT", "POST"),
        ("/v1/models/tiny/metadata", "POST", "GET"),
        ("/v1/models/tiny", "DELETE", "GET"),
    ]:
        status, headers, body = call_with_headers(
            server, path, method=method, raw=b"{}" if method != "GET" else None
        )
        assert status == 405 and headers["Allow"] == allowed, (path, body)
        assert allowed in body["error"]


def test_bodies_over_the_limit_are_413(tmp_path: Path, repo: Path) -> None:
    process = start_server(
        ["--model_base_path", str(repo), "--model_name", "tiny", "--grpc_max_message_bytes", "65536"],
        tmp_path / "server.log",
    )
    try:
        body = {"instances": pixels(20).tolist()}
        assert len(json.dumps(body)) > 65536
        status, body = call(process, "/v1/models/tiny:predict", body)
        assert status == 413 and "Too Large" in body["error"], body
        assert call(process, "/v1/models/tiny:predict", {"instances": pixels(1).tolist()})[0] == 200
    finally:
        assert process.stop() == 0, process.log()


def test_classify_and_b64_input_errors(server: ServerProcess, repo: Path) -> None:
    batch = pixels(2, seed=9)
    status, body = call(
        server,
        "/v1/models/tiny:classify",
        {"examples": [{"image": row.reshape(-1).tolist()} for row in batch]},
    )
    assert status == 200
    expected = reference_probabilities(repo / "3", batch)
    for row, result in zip(expected, body["results"], strict=True):
        assert [label for label, _ in result] == [str(i) for i in range(10)]
        np.testing.assert_allclose([score for _, score in result], row, atol=1e-5)
    b64 = {"b64": base64.b64encode(b"\x00").decode()}
    status, body = call(server, "/v1/models/tiny:predict", {"instances": [b64]})
    assert status == 400


def test_prometheus_metrics(server: ServerProcess) -> None:
    call(server, "/v1/models/tiny:predict", {"instances": pixels(1).tolist()})
    call(server, "/v1/models/ghost:predict", {"instances": [1]})
    status, text = call(server, "/monitoring/prometheus/metrics")
    assert status == 200
    # TF Serving's names and labels (more in test_metrics_names.py), and the project's own beside them.
    assert ':tensorflow:serving:request_count{model_name="tiny",status="OK"}' in text
    assert ':tensorflow:serving:request_latency_count{model_name="tiny",API="predict",entrypoint="REST"}' in text
    assert 'model_server_requests_total{API="predict",entrypoint="REST",model_name="tiny",status="OK"}' in text
    # Unserved names collapse into one label.
    assert ':tensorflow:serving:request_count{model_name="<unknown>",status="NOT_FOUND"}' in text
    assert 'model_server_model_version_state{model_name="tiny",version="3"} 30.0' in text


def test_large_bodies_are_answered(server: ServerProcess, repo: Path) -> None:
    batch = pixels(32, seed=11) + np.float32(0.123456)  # max_batch_size rows, long numbers
    body = {"instances": batch.tolist()}
    assert len(json.dumps(body)) > 256 * 1024
    status, answer = call(server, "/v1/models/tiny:predict", body)
    assert status == 200
    np.testing.assert_allclose(answer["predictions"], reference_probabilities(repo / "3", batch), atol=1e-5)
    bad = {"instances": [*batch.tolist()[:-1], [[1, 2]]]}  # ragged, and large
    status, answer = call(server, "/v1/models/tiny:predict", bad)
    assert status == 400 and "cannot read" in answer["error"]
    # One row past max_batch_size: TF Serving's answer, not a retryable "queue full".
    status, answer = call(server, "/v1/models/tiny:predict", {"instances": pixels(33).tolist()})
    assert status == 400 and answer["error"] == "Task size 33 is larger than maximum input batch size 32"
