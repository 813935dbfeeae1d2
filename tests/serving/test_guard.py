"""Slow, many and impatient clients over real sockets: slowloris headers and idle connections are
cut, connections past the cap get 503, bodies past the bytes-in-flight budget get 429, slow bodies
408, requests past the REST timeout 504, gRPC calls past the concurrency cap RESOURCE_EXHAUSTED,
and calls whose deadline passed are dropped before the engine runs them, without log noise.
Normal requests are answered throughout.

No test sleeps to race the server: each waits on a socket (with a bound) for what must happen.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import ServerProcess, start_server, write_tiny_version

pytestmark = pytest.mark.slow

IDLE_SECONDS = 1.0
MAX_CONNECTIONS = 6
INFLIGHT_BYTES = 20_000
SLOW_ROWS = 1000  # rows that keep the slow model busy for about half a second (2 threads)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("guard")
    write_tiny_version(folder / "tiny", 1)
    write_tiny_version(folder / "slow", 1, slow=True)
    (folder / "models.config").write_text(
        "model_config_list {\n"
        f"  config {{ name: 'tiny' base_path: '{folder / 'tiny'}' model_platform: 'tensorflow' }}\n"
        f"  config {{ name: 'slow' base_path: '{folder / 'slow'}' model_platform: 'tensorflow' }}\n"
        "}\n"
    )
    (folder / "batching.config").write_text(
        "max_batch_size { value: 1000 } num_batch_threads { value: 1 } max_enqueued_batches { value: 10 }"
    )
    process = start_server(
        [
            "--model_config_file",
            str(folder / "models.config"),
            "--enable_batching",
            "--batching_parameters_file",
            str(folder / "batching.config"),
            "--rest_idle_timeout_seconds",
            str(IDLE_SECONDS),
            "--rest_body_timeout_seconds",
            "0.1",
            "--rest_max_connections",
            str(MAX_CONNECTIONS),
            "--rest_max_inflight_bytes",
            str(INFLIGHT_BYTES),
            "--rest_api_timeout_in_ms",
            "300",
            "--grpc_max_concurrent_rpcs",
            "4",
        ],
        folder / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()
    assert "internal error" not in process.log()


def _image_body(rows: int = 1) -> bytes:
    return json.dumps({"instances": np.zeros((rows, 28, 28, 1)).tolist()}).encode()


def _post(server: ServerProcess, path: str, body: bytes) -> tuple[int, dict, dict[str, str]]:
    request = urllib.request.Request(server.rest_url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def _healthy(server: ServerProcess) -> None:
    status, answer, _ = _post(server, "/v1/models/tiny:predict", _image_body())
    assert status == 200 and len(answer["predictions"]) == 1


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)


def _read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slowloris_headers_and_idle_connections_are_cut(server: ServerProcess) -> None:
    started = time.monotonic()  # before connecting: the server's idle timer starts at the connection
    slow = _connect(server)
    idle = _connect(server)
    slow.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    for _ in range(3):  # a byte now and then does not keep it open
        slow.sendall(b"X")
        _healthy(server)  # normal requests meanwhile
    assert _read_response(slow) == b""  # closed by the server, no answer
    assert _read_response(idle) == b""
    assert IDLE_SECONDS * 0.95 <= time.monotonic() - started < IDLE_SECONDS + 10  # +10: a loaded machine
    slow.close()
    idle.close()
    _healthy(server)


def test_connections_past_the_cap_get_503_and_are_closed(server: ServerProcess) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = _connect(server)
            # A complete request on each, so the server has surely accepted and registered it.
            sock.sendall(b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(sock)
        extra = _connect(server)
        answer = _read_response(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        assert b"too many connections" in answer
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, connections are taken again (the server notices the closes at once, but
    # asynchronously: try until it has, within a bound).
    deadline = time.monotonic() + 10
    while True:
        try:
            _healthy(server)
            break
        except (AssertionError, urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise


def test_bodies_past_the_inflight_budget_get_429_with_retry_after(server: ServerProcess) -> None:
    body = _image_body()  # ~ 6 KB
    holder = _connect(server)
    # Declares a body of 15,000 bytes and sends half: it holds 15,000 bytes of the 20,000 budget.
    holder.sendall(
        b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 15000\r\n\r\n" + b" " * 7500
    )
    deadline = time.monotonic() + 10
    while True:  # until the server has read the holder's headers (then every try is refused)
        status, answer, headers = _post(server, "/v1/models/tiny:predict", body)
        if status == 429 or time.monotonic() > deadline:
            break
        assert status == 200
    assert status == 429 and headers.get("Retry-After") == "1"
    assert "--rest_max_inflight_bytes" in answer["error"]
    holder.close()
    deadline = time.monotonic() + 10
    while _post(server, "/v1/models/tiny:predict", body)[0] == 429:  # the budget comes back
        assert time.monotonic() < deadline


def test_a_body_that_does_not_arrive_in_time_is_408(server: ServerProcess) -> None:
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{\"instances\": "
    )
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"--rest_body_timeout_seconds" in answer
    _healthy(server)


def test_a_request_past_the_rest_timeout_is_504(server: ServerProcess) -> None:
    status, answer, _ = _post(server, "/v1/models/slow:predict", _image_body(SLOW_ROWS))
    assert status == 504 and "--rest_api_timeout_in_ms" in answer["error"]
    _healthy(server)


def _slow_request(rows: int) -> apis_pb2.PredictRequest:
    return _request("slow", rows)


def _request(model: str, rows: int) -> apis_pb2.PredictRequest:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["image"].CopyFrom(codec.from_numpy(np.zeros((rows, 28, 28, 1), np.float32)))
    return request


def _metric(server: ServerProcess, pattern: str) -> float:
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(pattern + r"\S* (\S+)", text))


def test_calls_whose_deadline_passed_are_dropped_before_the_engine(tmp_path: Path) -> None:
    # A batch waits up to 5 s for 16 rows: calls with a 1 s deadline expire in the queue, for sure.
    write_tiny_version(tmp_path / "tiny", 1)
    (tmp_path / "batching.config").write_text("max_batch_size { value: 16 } batch_timeout_micros { value: 5000000 }")
    process = start_server(
        [
            "--model_name",
            "tiny",
            "--model_base_path",
            str(tmp_path / "tiny"),
            "--enable_batching",
            "--batching_parameters_file",
            str(tmp_path / "batching.config"),
        ],
        tmp_path / "server.log",
    )
    try:
        rows = r'model_server_batch_size_sum\{model_name="tiny"'
        with grpc.insecure_channel(process.grpc_target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Predict(_request("tiny", 1), timeout=1.0)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # A full batch is cut at once; the expired calls ahead of it in the queue are skipped.
            stub.Predict(_request("tiny", 16), timeout=30)
        assert _metric(process, rows) == 16
        deadline_exceeded = r':tensorflow:serving:request_count(?:_total)?\{.*model_name="tiny".*status="DEADLINE_EXCEEDED"'
        # (A call gRPC itself timed out before its handler ran is not counted: on a loaded machine
        # that can happen; none may count as anything but DEADLINE_EXCEEDED.)
        assert 1 <= _metric(process, deadline_exceeded) <= 3
        assert _metric(process, r':tensorflow:serving:request_count(?:_total)?\{.*status="CANCELLED"') == 0
        assert _metric(process, r':tensorflow:serving:request_count(?:_total)?\{.*status="INTERNAL"') == 0
    finally:
        assert process.stop() == 0
    log = process.log()
    assert "Traceback" not in log and "ERROR" not in log  # no noise for calls nobody waits for


def test_grpc_calls_past_the_concurrency_cap_are_resource_exhausted_and_it_recovers(server: ServerProcess) -> None:
    async def burst() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            calls = [stub.Predict(_slow_request(50), timeout=60) for _ in range(12)]
            codes = []
            for call in calls:
                try:
                    await call
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
            return codes

    codes = asyncio.run(burst())
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes.count(grpc.StatusCode.OK) >= 4
    with grpc.insecure_channel(server.grpc_target) as channel:  # recovered: one at a time all pass
        stub = apis_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(3):
            stub.Predict(_slow_request(1), timeout=30)
