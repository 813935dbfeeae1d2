"""OpenTelemetry tracing: the server span continues the caller's W3C trace, with queue and compute
children and the request's attributes.

In process (the server started in the test's event loop with `serving.server.start`, spans caught by
the SDK's in-memory exporter, batching on so requests pass the batch queue), and once over a real
process exporting over OTLP to a stand-in collector (which also shows that without `--access_log`
no access line is written)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent import futures
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serving import codec
from serving.accesslog import AccessLog, Telemetry
from serving.config import BatchingConfig, ModelConfig, ServerConfig, TracingConfig
from serving.proto import apis_pb2, apis_pb2_grpc
from serving.server import RunningServer, start
from serving.tracing import Tracing
from tests.serving.fixtures import start_server, write_tiny_version

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _traceparent(sampled: bool = True) -> str:
    return f"00-{TRACE_ID}-{PARENT_ID}-{'01' if sampled else '00'}"


class _Served:
    def __init__(self, running: RunningServer, exporter: InMemorySpanExporter, access_log: Path) -> None:
        self.running, self.exporter, self.access_log = running, exporter, access_log

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind == SpanKind.SERVER]

    def children(self, parent: ReadableSpan) -> dict[str, ReadableSpan]:
        assert parent.context is not None
        return {
            s.name: s
            for s in self.exporter.get_finished_spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        }


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[_Served]:
    base = tmp_path / "tiny"
    write_tiny_version(base, 1)
    config = ServerConfig(
        models=(ModelConfig("tiny", base),),
        host="127.0.0.1",
        port=0,
        rest_api_port=0,
        file_system_poll_wait_seconds=0,
        batching=BatchingConfig(batch_timeout_micros=2000),  # every request waits in the batch queue
        drain_seconds=1,
    )
    exporter = InMemorySpanExporter()
    access_log = tmp_path / "access.log"
    telemetry = Telemetry(AccessLog(str(access_log)), Tracing(exporter, batch=False))
    running = await start(config, telemetry=telemetry)
    exporter.clear()  # warm-up requests do not pass the protocol layer, but be sure
    try:
        yield _Served(running, exporter, access_log)
    finally:
        await running.stop()


def _predict_request(rows: int) -> apis_pb2.PredictRequest:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["image"].CopyFrom(codec.from_numpy(np.zeros((rows, 28, 28, 1), np.float32)))
    return request


def _check_server_span(served: _Served, span: ReadableSpan, rows: int) -> None:
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID and span.parent.is_remote
    attributes = span.attributes or {}
    assert attributes["serving.model"] == "tiny"
    assert attributes["serving.version"] == 1
    assert attributes["serving.signature"] == "serving_default"
    assert attributes["serving.rows"] == rows
    assert attributes["serving.status"] == "OK"
    children = served.children(span)
    assert set(children) == {"queue", "compute"}
    queue, compute = children["queue"], children["compute"]
    assert span.start_time is not None and span.end_time is not None
    for child in (queue, compute):
        assert child.start_time is not None and child.end_time is not None
        assert span.start_time <= child.start_time <= child.end_time <= span.end_time
    assert queue.end_time <= compute.start_time  # type: ignore[operator]
    # The batch queue's 2 ms timeout: the request waited about that long for company.
    assert queue.end_time - queue.start_time >= 1_000_000  # type: ignore[operator]


async def test_grpc_span_continues_the_callers_trace(served: _Served) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.running.grpc_port}") as channel:
        stub = apis_pb2_grpc.PredictionServiceStub(channel)
        await stub.Predict(_predict_request(2), timeout=10, metadata=(("traceparent", _traceparent()),))
    (span,) = served.server_spans()
    assert span.name == "tensorflow.serving.PredictionService/Predict"
    _check_server_span(served, span, rows=2)
    attributes = span.attributes or {}
    assert (attributes["rpc.system"], attributes["rpc.grpc.status_code"]) == ("grpc", 0)
    # The access log shares the record: its line names the same trace.
    served.running.telemetry.access_log.close()  # type: ignore[union-attr]  # flushes the line
    (line,) = [json.loads(text) for text in served.access_log.read_text().splitlines()]
    assert line["trace_id"] == TRACE_ID and line["rows"] == 2
    assert line["queue_ms"] >= 1.0


async def test_rest_span_and_sampling(served: _Served) -> None:
    base = f"http://127.0.0.1:{served.running.rest_port}"
    body = {"instances": np.zeros((3, 28, 28, 1)).tolist()}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/models/tiny:predict", json=body, headers={"traceparent": _traceparent()}) as response:
            assert response.status == 200
        (span,) = served.server_spans()
        assert span.name == "POST /v1/models/{model}:predict"
        _check_server_span(served, span, rows=3)
        assert (span.attributes or {})["http.response.status_code"] == 200

        # The caller decided not to sample: nothing is recorded.
        served.exporter.clear()
        headers = {"traceparent": _traceparent(sampled=False)}
        async with session.post(f"{base}/v1/models/tiny:predict", json=body, headers=headers) as response:
            assert response.status == 200
        assert served.exporter.get_finished_spans() == ()

        # No traceparent: a trace of its own (sampled at the default ratio 1.0); an error is recorded too.
        async with session.get(f"{base}/v1/models/nope/metadata") as response:
            assert response.status == 404
        (span,) = served.server_spans()
        assert span.parent is None and span.context is not None and format(span.context.trace_id, "032x") != TRACE_ID
        assert span.name == "GET /v1/models/{model}/metadata"
        assert (span.attributes or {})["serving.status"] == "NOT_FOUND"


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A stand-in OpenTelemetry collector: keeps the spans of every OTLP export it receives."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_export_over_a_real_process(tmp_path: Path) -> None:
    collector = _Collector()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    base = tmp_path / "tiny"
    write_tiny_version(base, 1)
    log = tmp_path / "server.log"
    args = ["--model_name", "tiny", "--model_base_path", str(base)]
    server = start_server([*args, "--tracing_exporter", "otlp", "--tracing_endpoint", f"http://127.0.0.1:{port}"], log)
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(_predict_request(1), timeout=10, metadata=(("traceparent", _traceparent()),))
    finally:
        assert server.stop() == 0  # the spans still buffered are exported on the way out
        grpc_server.stop(0)
    (span,) = [s for s in collector.spans if s.kind == s.SPAN_KIND_SERVER]
    assert span.name == "tensorflow.serving.PredictionService/Predict"
    assert (span.trace_id.hex(), span.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    children = {s.name for s in collector.spans if s.parent_span_id == span.span_id}
    assert children == {"queue", "compute"}
    # Without --access_log, no access line anywhere (the server's output is stdout and stderr here).
    assert not re.search(r'"protocol": ?"grpc"', server.log())


def test_console_exporter(capfd: pytest.CaptureFixture[str]) -> None:
    """`--tracing_exporter console`: one JSON line per span on stdout, as spans end."""
    tracing = Tracing.from_config(TracingConfig("console"))
    telemetry = Telemetry(None, tracing)
    record = telemetry.begin(
        protocol="rest", transport="http", api="status", request="GET /v1/models/tiny",
        route="GET /v1/models/{model}", peer="127.0.0.1:1", request_bytes=0, model="tiny",
        headers={"traceparent": _traceparent()},
    )  # fmt: skip
    telemetry.end(record)
    telemetry.close()
    (line,) = [json.loads(text) for text in capfd.readouterr().out.splitlines() if text.startswith("{")]
    assert (line["name"], line["kind"], line["parent_id"]) == ("GET /v1/models/{model}", "SpanKind.SERVER", f"0x{PARENT_ID}")
    assert line["attributes"]["serving.model"] == "tiny"


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    """`--tracing_exporter none` (the default): the server never imports opentelemetry."""
    code = (
        "import sys\n"
        "import serving.server\n"
        "from serving.accesslog import telemetry_from_config\n"
        "from serving.config import parse_args\n"
        f"config = parse_args(['--model_name', 'm', '--model_base_path', {str(tmp_path)!r}, '--access_log', '-'])\n"
        "telemetry = telemetry_from_config(config)\n"
        "assert telemetry is not None and telemetry.tracing is None\n"
        "telemetry.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
