"""OpenTelemetry tracing (`--tracing_exporter otlp|console`): one server span per request.

Imported only when tracing is on (the `otel` extra: opentelemetry-api, -sdk and the OTLP gRPC
exporter), through the OpenTelemetry SDK directly, with a tracer provider of this server's own (no
global provider, no auto-instrumentation, so gRPC and aiohttp run exactly as without tracing).

A span is started when the protocol layer makes the request's record (`serving.accesslog`): kind
SERVER, named like OpenTelemetry's conventions name RPC and HTTP server spans
(`tensorflow.serving.PredictionService/Predict`, `POST /v1/models/{model}:predict`), and a child of
the caller's span when the request carries a W3C `traceparent` (gRPC metadata or HTTP header). When
the request ends, the phases the data plane recorded become child spans (`preprocess`, `queue`,
`compute`, with their real start and end times) and the span gets the model, version, signature,
rows and status. Sampling: the caller's decision when it sent one, else `--tracing_sample_ratio`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving import __version__
from serving.accesslog import RequestRecord
from serving.config import TracingConfig

SERVICE_NAME = "model-serving"
CLOSE_SECONDS = 2.0  # at shutdown, how long buffered spans may take to reach the collector
EXPORT_SECONDS = 5.0  # one OTLP export, retries included (the SDK's default, 10 s, would hold a shutdown)
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent / tracestate


class Tracing:
    """A tracer provider and what the request path calls: `start` and `finish` a record's span."""

    def __init__(self, exporter: SpanExporter, sample_ratio: float = 1.0, batch: bool = True) -> None:
        resource = Resource.create({"service.name": SERVICE_NAME, "service.version": __version__})
        self.provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio))
        )
        # Batched export runs in the SDK's thread; the simple processor exports as each span ends
        # (the console exporter, and tests, want every span at once).
        self.exporter = exporter
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("serving")

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracing:
        exporter: SpanExporter
        if config.exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            # One JSON object per line, to the stdout of now (the SDK's default is the one at its import).
            exporter = ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
            return cls(exporter, config.sample_ratio, batch=False)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # No endpoint: the exporter's own default (OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317).
        # An http:// endpoint is plaintext, https:// TLS.
        exporter = OTLPSpanExporter(endpoint=config.endpoint or None, timeout=EXPORT_SECONDS)
        return cls(exporter, config.sample_ratio)

    def start(self, record: RequestRecord, headers: Mapping[str, str] | None) -> None:
        """Open the record's server span, the child of the caller's `traceparent` if it sent one."""
        parent = _PROPAGATOR.extract(headers) if headers else None
        start_ns = int(record.wall * 1e9)
        span = self.tracer.start_span(record.route, context=parent, kind=SpanKind.SERVER, start_time=start_ns)
        record.span = span
        context = span.get_span_context()
        record.trace_id = trace.format_trace_id(context.trace_id)

    def finish(self, record: RequestRecord) -> None:
        """Child spans of the recorded phases, the request's attributes and status; end the span."""
        span = record.span
        if span is None:
            return
        record.span = None
        if not span.is_recording():  # not sampled: nothing is exported
            span.end()
            return

        def ns(seconds: float) -> int:  # a perf_counter reading as epoch nanoseconds
            return int((record.wall + (seconds - record.started)) * 1e9)

        parent = trace.set_span_in_context(span)
        for name, start, end in record.phases:
            child = self.tracer.start_span(name, context=parent, start_time=ns(start))
            child.end(end_time=ns(end))
        # Few attributes: the SDK's cost grows with each (the protocol and API are in the span's
        # name; bytes and peer in the access log).
        attributes: dict[str, Any] = {
            "serving.model": record.model,
            "serving.signature": record.signature,
            "serving.rows": record.rows,
            "serving.status": record.status,
        }
        if record.version is not None:
            attributes["serving.version"] = record.version
        if record.transport == "grpc":
            attributes["rpc.system"] = "grpc"
            attributes["rpc.grpc.status_code"] = grpc.StatusCode[record.status].value[0]
        else:
            attributes["http.response.status_code"] = record.http_status
        span.set_attributes(attributes)
        if record.http_status >= 500:  # server faults; a caller's error (4xx) leaves the status unset
            span.set_status(Status(StatusCode.ERROR, record.status))
        span.end(end_time=ns(record.ended))

    def close(self) -> None:
        """Export what is still buffered (for at most CLOSE_SECONDS: an unreachable collector must
        not hold the shutdown through the exporter's retries), then stop."""
        if not self.provider.force_flush(timeout_millis=int(CLOSE_SECONDS * 1000)):
            self.exporter.shutdown()  # ends the retries still waiting
        self.provider.shutdown()
