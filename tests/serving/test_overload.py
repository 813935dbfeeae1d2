"""Overload over real channels: a full batch queue is RESOURCE_EXHAUSTED (gRPC) / 429 (REST), a body
over the size limit is 413, and the server keeps answering once the burst is over."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import ServerProcess, start_server, write_tiny_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("overload")
    write_tiny_version(folder / "slow", 1, slow=True)  # ~10 ms per engine call
    (folder / "batching.config").write_text(
        "max_batch_size { value: 1 } max_enqueued_batches { value: 1 } num_batch_threads { value: 1 }"
    )
    process = start_server(
        [
            "--model_name",
            "slow",
            "--model_base_path",
            str(folder / "slow"),
            "--enable_batching",
            "--batching_parameters_file",
            str(folder / "batching.config"),
            "--grpc_max_message_bytes",
            str(1 << 20),
            "--rest_max_body_bytes",
            str(1 << 20),
        ],
        folder / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()


def request() -> apis_pb2.PredictRequest:
    message = apis_pb2.PredictRequest()
    message.model_spec.name = "slow"
    message.inputs["image"].CopyFrom(codec.from_numpy(np.zeros((1, 28, 28, 1), np.float32)))
    return message


def test_burst_over_grpc_is_resource_exhausted_then_served(server: ServerProcess) -> None:
    async def burst() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)

            async def one() -> grpc.StatusCode:
                try:
                    await stub.Predict(request(), timeout=30)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    return error.code()

            return await asyncio.gather(*(one() for _ in range(30)))

    codes = asyncio.run(burst())
    assert grpc.StatusCode.OK in codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    with grpc.insecure_channel(server.grpc_target) as channel:
        assert apis_pb2_grpc.PredictionServiceStub(channel).Predict(request(), timeout=30).outputs


def _post(url: str, body: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_burst_over_rest_is_429_and_oversized_body_is_413(server: ServerProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = f"{server.rest_url}/v1/models/slow:predict"
    body = json.dumps({"instances": np.zeros((1, 28, 28, 1)).tolist()}).encode()
    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda _: _post(url, body), range(30)))
    statuses = {status for status, _ in results}
    assert 200 in statuses and 429 in statuses and statuses <= {200, 429}
    assert all("queue is full" in answer["error"] for status, answer in results if status == 429)

    status, answer = _post(url, b'{"instances": [' + b"0," * (1 << 20) + b"0]}")  # 2 MiB > 1 MiB limit
    assert status == 413 and answer["error"]
    assert _post(url, body)[0] == 200
