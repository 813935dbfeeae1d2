"""Prometheus metrics, exposed as text on the REST port (path from the monitoring config).

Names follow TF Serving's where one exists (`:tensorflow:serving:request_count`, latency in
microseconds), so dashboards written for TF Serving keep working; the rest describe batching and
model state. A registry per server instance, so tests can run several servers in one process.

With `--workers N` the worker processes share their values through prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `serving.workers`), so a scrape of any worker
reports the sum over all of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from serving.errors import ServingError

# Microseconds, as TF Serving reports request latency: 100us .. 10s.
_LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1e6, 1e7)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class EngineMetrics:
    """Per engine call: rows, padding rows, seconds (children of the labelled metrics)."""

    __slots__ = ("_batch_size", "_padding", "_seconds")

    def __init__(self, batch_size: Any, padding: Any, seconds: Any) -> None:
        self._batch_size, self._padding, self._seconds = batch_size, padding, seconds

    def observe(self, rows: int, padded: int, seconds: float) -> None:
        self._batch_size.observe(rows)
        if padded > rows:
            self._padding.inc(padded - rows)
        self._seconds.observe(seconds)


class Metrics:
    def __init__(self, model_names: Iterable[str] = ()) -> None:
        # Label values come from requests: names that are not served collapse into one value, so
        # a client sending random model names cannot grow the series without bound.
        self.model_names = frozenset(model_names)
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_count = Counter(
            ":tensorflow:serving:request_count",
            "Requests by model, API, entrypoint and status",
            ["model_name", "API", "entrypoint", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "End-to-end request latency in microseconds (server side)",
            ["model_name", "API", "entrypoint"],
            buckets=_LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "model_server_batch_size",
            "Rows per engine call (before padding)",
            ["model_name", "signature"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_padding = Counter(
            "model_server_batch_padding_rows_total",
            "Rows added to reach an allowed batch size",
            ["model_name", "signature"],
            registry=self.registry,
        )
        self.engine_seconds = Histogram(
            "model_server_engine_seconds",
            "Time spent in one engine call",
            ["model_name", "signature"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.queued_rows = Gauge(
            "model_server_batch_queue_rows",
            "Rows waiting in batch queues",
            ["model_name"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.model_state = Gauge(
            "model_server_model_version_state",
            "ModelVersionStatus state number (30 = AVAILABLE); the least ready worker's",
            ["model_name", "version"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )

        # Label children, looked up once: `labels(...)` takes a lock and builds a tuple per call,
        # which is measurable on a request path that costs a few hundred microseconds in all.
        self._requests: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._engines: dict[tuple[str, str], EngineMetrics] = {}

    def observe_request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """Count one finished request; `status` is the gRPC code name it ended with."""
        key = (model, api, entrypoint, status)
        children = self._requests.get(key)
        if children is None:
            name = model if model in self.model_names else "<unknown>"
            children = (
                self.request_count.labels(name, api, entrypoint, status),
                self.request_latency.labels(name, api, entrypoint),
            )
            if len(self._requests) < 10_000:  # request-chosen names collapse, but bound the cache too
                self._requests[key] = children
        children[0].inc()
        children[1].observe(seconds * 1e6)

    @contextmanager
    def track(self, model: str, api: str, entrypoint: str) -> Iterator[None]:
        """Count one request and time it; the status label is the gRPC code name it ended with."""
        started = time.perf_counter()
        status = "OK"
        try:
            yield
        except ServingError as exc:
            status = exc.grpc_code.name
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except BaseException:
            status = "INTERNAL"
            raise
        finally:
            self.observe_request(model, api, entrypoint, status, time.perf_counter() - started)

    def engine(self, model: str, signature: str) -> EngineMetrics:
        """The engine-call metrics of one model and signature (cached)."""
        found = self._engines.get((model, signature))
        if found is None:
            found = EngineMetrics(
                self.batch_size.labels(model, signature),
                self.batch_padding.labels(model, signature),
                self.engine_seconds.labels(model, signature),
            )
            self._engines[(model, signature)] = found
        return found

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
