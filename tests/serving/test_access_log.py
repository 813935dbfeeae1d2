"""The structured access log (`--access_log`): one JSON line per request, over a real server process,
for gRPC and REST calls that succeed, fail and read metadata; and the record's pure pieces."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving import codec
from serving.accesslog import RequestRecord, peer_address, status_name
from serving.config import ConfigError, parse_args
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import ServerProcess, start_server, write_tiny_version

KEYS = {
    "time", "protocol", "transport", "api", "request", "model", "version", "signature", "status",
    "http_status", "rows", "queue_ms", "compute_ms", "total_ms", "request_bytes", "peer",
}  # fmt: skip


@pytest.fixture(scope="module")
def access_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("access") / "access.log"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, access_log: Path) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("models") / "tiny"
    write_tiny_version(base, 1)
    log = tmp_path_factory.mktemp("log") / "server.log"
    process = start_server(
        ["--model_name", "tiny", "--model_base_path", str(base), "--access_log", str(access_log)], log
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[apis_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield apis_pb2_grpc.PredictionServiceStub(channel)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _next_line(path: Path, seen: int, timeout: float = 10) -> dict[str, Any]:
    """The line written after the `seen` already there (the writer thread is not synchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _lines(path)
        if len(lines) > seen:
            assert len(lines) == seen + 1, lines[seen:]
            return lines[seen]
        time.sleep(0.01)
    raise AssertionError(f"no access log line after {seen} within {timeout} s")


def _check_times(line: dict[str, Any]) -> None:
    assert set(line) >= KEYS
    assert line["queue_ms"] >= 0 and line["compute_ms"] >= 0
    assert line["queue_ms"] + line["compute_ms"] <= line["total_ms"] < 10_000
    assert line["time"].endswith("Z")
    assert line["peer"].startswith("127.0.0.1:")
    assert "trace_id" not in line  # tracing is off


def _predict_request(model: str, rows: int) -> apis_pb2.PredictRequest:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["image"].CopyFrom(codec.from_numpy(np.full((rows, 28, 28, 1), 7, np.float32)))
    return request


def test_grpc_predict(stub: apis_pb2_grpc.PredictionServiceStub, access_log: Path) -> None:
    seen = len(_lines(access_log))
    request = _predict_request("tiny", 3)
    stub.Predict(request, timeout=10)
    line = _next_line(access_log, seen)
    _check_times(line)
    assert line["protocol"] == "grpc" and line["transport"] == "grpc"
    assert line["api"] == "predict"
    assert line["request"] == "/tensorflow.serving.PredictionService/Predict"
    assert (line["model"], line["version"], line["signature"]) == ("tiny", 1, "serving_default")
    assert (line["status"], line["http_status"], line["rows"]) == ("OK", 200, 3)
    assert line["request_bytes"] == request.ByteSize()
    assert line["compute_ms"] > 0


def test_rest_predict(server: ServerProcess, access_log: Path) -> None:
    seen = len(_lines(access_log))
    body = json.dumps({"instances": np.zeros((2, 28, 28, 1)).tolist()}).encode()
    request = urllib.request.Request(f"{server.rest_url}/v1/models/tiny/versions/1:predict", data=body)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    line = _next_line(access_log, seen)
    _check_times(line)
    assert (line["protocol"], line["transport"], line["api"]) == ("rest", "http", "predict")
    assert line["request"] == "POST /v1/models/tiny/versions/1:predict"
    assert (line["model"], line["version"], line["signature"], line["rows"]) == ("tiny", 1, "serving_default", 2)
    assert (line["status"], line["http_status"], line["request_bytes"]) == ("OK", 200, len(body))
    assert line["compute_ms"] > 0


def test_errors(server: ServerProcess, stub: apis_pb2_grpc.PredictionServiceStub, access_log: Path) -> None:
    seen = len(_lines(access_log))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(_predict_request("nope", 1), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    line = _next_line(access_log, seen)
    _check_times(line)
    assert (line["model"], line["version"], line["status"], line["http_status"]) == ("nope", None, "NOT_FOUND", 404)
    assert line["compute_ms"] == 0

    # A signature the model lacks: FAILED_PRECONDITION, which REST answers 400 (the code name says more).
    body = json.dumps({"signature_name": "missing", "instances": [[0.0]]}).encode()
    request = urllib.request.Request(f"{server.rest_url}/v1/models/tiny:predict", data=body)
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=10)
    assert http_error.value.code == 400
    line = _next_line(access_log, seen + 1)
    _check_times(line)
    assert (line["api"], line["model"], line["status"], line["http_status"]) == ("predict", "tiny", "FAILED_PRECONDITION", 400)

    # A route nobody serves: aiohttp's own 404, still one line.
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{server.rest_url}/nowhere", timeout=10)
    line = _next_line(access_log, seen + 2)
    assert (line["protocol"], line["api"], line["status"], line["http_status"]) == ("rest", "unknown", "NOT_FOUND", 404)


def test_metadata_and_status(server: ServerProcess, stub: apis_pb2_grpc.PredictionServiceStub, access_log: Path) -> None:
    seen = len(_lines(access_log))
    request = apis_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    stub.GetModelMetadata(request, timeout=10)
    line = _next_line(access_log, seen)
    _check_times(line)
    assert (line["api"], line["request"]) == ("metadata", "/tensorflow.serving.PredictionService/GetModelMetadata")
    assert (line["model"], line["version"], line["rows"], line["status"]) == ("tiny", 1, 0, "OK")
    assert line["queue_ms"] == line["compute_ms"] == 0

    with urllib.request.urlopen(f"{server.rest_url}/v1/models/tiny", timeout=10) as response:
        assert response.status == 200
    line = _next_line(access_log, seen + 1)
    _check_times(line)
    assert (line["protocol"], line["api"], line["model"], line["request"]) == ("rest", "status", "tiny", "GET /v1/models/tiny")


# -- pure pieces ---------------------------------------------------------------------------------


def test_phases_count_overlaps_once() -> None:
    record = RequestRecord("grpc", "grpc", "predict", "/s/M", "s/M", "127.0.0.1:1", 10, started=100.0)
    record.dispatched = 100.0
    record.computed(101.0, 103.0)  # two pieces of one split request, run in parallel
    record.computed(102.0, 104.0)
    record.ended = 105.0
    assert record.seconds("queue") == pytest.approx(1.0)
    assert record.seconds("compute") == pytest.approx(3.0)
    fields = record.fields()
    assert (fields["queue_ms"], fields["compute_ms"], fields["total_ms"]) == (1000.0, 3000.0, 5000.0)


def test_queue_of_a_request_that_never_ran() -> None:
    record = RequestRecord("rest", "http", "predict", "POST /", "POST /", "", 0)
    record.dispatch()
    record.finish()
    assert record.seconds("compute") == 0
    assert 0 <= record.seconds("queue") <= record.ended - record.started


def test_status_and_peer_names() -> None:
    assert [status_name(s) for s in (200, 302, 400, 404, 413, 429, 500, 503, 418)] == [
        "OK", "OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "INTERNAL",
        "UNAVAILABLE", "FAILED_PRECONDITION",
    ]  # fmt: skip
    assert peer_address("ipv4:127.0.0.1:5000") == "127.0.0.1:5000"
    assert peer_address("ipv6:[::1]:5000") == "[::1]:5000"


def test_flags(tmp_path: Path) -> None:
    base = ["--model_name", "m", "--model_base_path", str(tmp_path)]
    config = parse_args(base)
    assert config.access_log == "" and config.tracing is None
    assert parse_args([*base, "--access_log", "-"]).access_log == "-"
    assert parse_args([*base, "--access_log", str(tmp_path / "a.log")]).access_log == str(tmp_path / "a.log")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args([*base, "--access_log", str(tmp_path / "no" / "a.log")])
    tracing = parse_args(
        [*base, "--tracing_exporter", "otlp", "--tracing_endpoint", "http://c:4317", "--tracing_sample_ratio", "0.25"]
    ).tracing
    assert tracing is not None and (tracing.exporter, tracing.endpoint, tracing.sample_ratio) == ("otlp", "http://c:4317", 0.25)
    with pytest.raises(ConfigError, match=r"between 0\.0 and 1\.0"):
        parse_args([*base, "--tracing_exporter", "console", "--tracing_sample_ratio", "2"])
    with pytest.raises(SystemExit):
        parse_args([*base, "--tracing_exporter", "zipkin"])


def test_open_inference_protocol_is_logged_too(
    server: ServerProcess, access_log: Path
) -> None:
    """V2 calls pass the same `rpc` decorator and REST middleware: logged with no V2 code of their own."""
    inference_pb2 = pytest.importorskip("serving.proto.inference_pb2")
    inference_pb2_grpc = pytest.importorskip("serving.proto.inference_pb2_grpc")
    seen = len(_lines(access_log))
    tensor = {"name": "image", "shape": [2, 28, 28, 1], "datatype": "FP32", "data": [0.0] * (2 * 784)}
    request = urllib.request.Request(
        f"{server.rest_url}/v2/models/tiny/infer", data=json.dumps({"inputs": [tensor]}).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    line = _next_line(access_log, seen)
    _check_times(line)
    assert (line["protocol"], line["transport"], line["api"], line["request"]) == (
        "v2", "http", "infer", "POST /v2/models/tiny/infer",
    )  # fmt: skip
    assert (line["model"], line["version"], line["rows"], line["status"]) == ("tiny", 1, 2, "OK")

    infer = inference_pb2.ModelInferRequest(model_name="tiny")
    entry = infer.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28, 1])
    entry.contents.fp32_contents.extend([0.0] * 784)
    with grpc.insecure_channel(server.grpc_target) as channel:
        inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer, timeout=10)
    line = _next_line(access_log, seen + 1)
    _check_times(line)
    assert (line["protocol"], line["transport"], line["api"]) == ("v2", "grpc", "infer")
    assert line["request"] == "/inference.GRPCInferenceService/ModelInfer"
    assert (line["model"], line["version"], line["rows"], line["status"]) == ("tiny", 1, 1, "OK")
