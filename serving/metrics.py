"""Prometheus metrics, exposed as text on the REST port (path from the monitoring config).

Two kinds of series on one page:
- TF Serving's own metrics, under its names and labels and in the exact text its exporter
  (`tensorflow_serving/util/prometheus_exporter.cc`) writes: the metric path with `/` replaced by `:`
  (`:tensorflow:serving:request_count`), counters without a `_total` suffix, histograms as
  `_bucket{le=...}` / `_sum` / `_count` over TF Serving's bucket limits (latency in microseconds,
  exponential buckets), a `# TYPE` line per metric and no `# HELP`. See `TF_METRICS` for the list.
  Dashboards and alerts written for `tensorflow_model_server` read them unchanged.
- the project's own (`model_server_*`), in prometheus_client's standard format: every request by
  API, engine calls, batch queues, model version states.

The values live in prometheus_client metric objects (so that with `--workers N` the worker processes
share them through its multiprocess mode: PROMETHEUS_MULTIPROC_DIR, set by `serving.workers`, and a
scrape of any worker reports the sum over all of them); `render` writes TF Serving's families itself.
A registry per server instance, so tests can run several servers in one process. In one process
the request path's observations wait in lists and reach those objects in bulk (`Deferred`): a
scrape adds what waits first, so every page is exact.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from serving.errors import ServingError


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TF's `monitoring::Buckets::Exponential`: `count` limits scale, scale*growth, ... (each the
    previous one times `growth`); TF adds an unbounded last bucket, written `+Inf`."""
    limits = []
    bound = scale
    for _ in range(count):
        limits.append(bound)
        bound *= growth
    return tuple(limits)


# TF Serving's bucket limits (tensorflow_serving/servables/tensorflow/util.cc, batching_session.cc,
# batching_util.h, saved_model_warmup_util.cc).
LATENCY_BUCKETS_US = exponential_buckets(10, 1.8, 33)  # 10 us .. ~20 minutes
QUEUING_BUCKETS_US = exponential_buckets(100, 1.2, 52)  # 100 us .. ~1 s
BATCH_SIZE_BUCKETS = exponential_buckets(1, 2, 14)  # 1 .. 8192
EXAMPLE_COUNT_BUCKETS = exponential_buckets(1, 2, 15)  # 1 .. 16384
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# The API label TF Serving writes, by (api, entrypoint) as this server names them, for the calls TF
# Serving counts in `request_count` / `request_latency`: gRPC Predict, Classify and Regress
# (prediction_service_impl.cc), and every REST call under /v1/models (http_server.cc: the method
# from the URL, "" for the GET status and metadata calls). GetModelMetadata, GetModelStatus and
# MultiInference over gRPC are not counted by TF Serving, so not here either (the project's
# `model_server_requests_total` counts every call).
TF_API: dict[tuple[str, str], str] = {
    ("predict", "GRPC"): "Predict",
    ("classify", "GRPC"): "Classify",
    ("regress", "GRPC"): "Regress",
    ("predict", "REST"): "predict",
    ("classify", "REST"): "classify",
    ("regress", "REST"): "regress",
    ("metadata", "REST"): "",
    ("status", "REST"): "",
}
# TF Serving's thread_pool_name label on batching metrics: the model server creates its batching
# sessions with an empty name (batching_session.cc, CreateBatchingSession).
BATCHING_THREAD_POOL = ""
UNKNOWN_MODEL = "<unknown>"
REQUESTS_FAMILY = "model_server_requests"  # written model_server_requests_total


@dataclass(frozen=True)
class TfMetric:
    """One of TF Serving's metrics: its path name, kind, labels and (histograms) bucket limits."""

    path: str  # TF's name, e.g. /tensorflow/serving/request_count
    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        """The Prometheus name TF Serving's exporter writes: every character outside
        [a-zA-Z0-9_] becomes ':' (and a leading digit gets a '_')."""
        name = "".join(c if c.isascii() and (c.isalnum() or c == "_") else ":" for c in self.path)
        return "_" + name if name[:1].isdigit() else name


TF_REQUEST_COUNT = TfMetric("/tensorflow/serving/request_count", "counter", ("model_name", "status"))
TF_REQUEST_LATENCY = TfMetric(
    "/tensorflow/serving/request_latency", "histogram", ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US
)
TF_RUNTIME_LATENCY = TfMetric(
    "/tensorflow/serving/runtime_latency", "histogram", ("model_name", "API", "runtime"), LATENCY_BUCKETS_US
)
TF_EXAMPLE_COUNTS = TfMetric(
    "/tensorflow/serving/request_example_counts", "histogram", ("model",), EXAMPLE_COUNT_BUCKETS
)
TF_EXAMPLE_COUNT_TOTAL = TfMetric("/tensorflow/serving/request_example_count_total", "counter", ("model",))
TF_QUEUING_LATENCY = TfMetric(
    "/tensorflow/serving/batching_session/queuing_latency", "histogram", ("thread_pool_name",), QUEUING_BUCKETS_US
)
TF_WRAPPED_RUN_COUNT = TfMetric("/tensorflow/serving/batching_session/wrapped_run_count", "counter", ())
TF_INPUT_BATCH_SIZE = TfMetric(
    "/tensorflow/serving/batching_session/input_batch_size", "histogram", (), BATCH_SIZE_BUCKETS
)
TF_PROCESSED_BATCH_SIZE = TfMetric(
    "/tensorflow/serving/batching_session/processed_batch_size", "histogram", (), BATCH_SIZE_BUCKETS
)
TF_PADDING_SIZE = TfMetric(
    "/tensorflow/serving/batching_session/padding_size", "histogram", ("execution_batch_size",), BATCH_SIZE_BUCKETS
)
TF_WARMUP_LATENCY = TfMetric(
    "/tensorflow/serving/model_warmup_latency", "histogram", ("model_path", "status"), LATENCY_BUCKETS_US
)
TF_WARMUP_RECORDS_READ = TfMetric("/tensorflow/serving/model_warmup_records_read", "counter", ("model_path", "status"))

TF_METRICS = (
    TF_REQUEST_COUNT,
    TF_REQUEST_LATENCY,
    TF_RUNTIME_LATENCY,
    TF_EXAMPLE_COUNTS,
    TF_EXAMPLE_COUNT_TOTAL,
    TF_QUEUING_LATENCY,
    TF_WRAPPED_RUN_COUNT,
    TF_INPUT_BATCH_SIZE,
    TF_PROCESSED_BATCH_SIZE,
    TF_PADDING_SIZE,
    TF_WARMUP_LATENCY,
    TF_WARMUP_RECORDS_READ,
)


def _below(limit: float) -> float:
    """The largest float under `limit`: TF's histogram puts a value equal to a limit in the next
    bucket (value < limit), prometheus_client in this one (value <= bound)."""
    return math.nextafter(limit, -math.inf)


def _tf_number(value: float) -> str:
    """A double as absl::StrCat writes it (six significant digits, %g style: 32.4, 1.27482e+06)."""
    return format(value, ".6g")


def _tf_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class EngineMetrics:
    """Per engine call: rows, padding rows, seconds (record functions of the labelled series).

    Also, with batching, TF Serving's batching-session metrics of the batch (wrapped_run_count,
    processed_batch_size, padding_size). TF Serving's `runtime_latency` is per request, not per
    engine call: see `Metrics.observe_runtime`.
    """

    __slots__ = ("_batch_size", "_batching", "_padding", "_seconds")

    def __init__(
        self,
        batch_size: Callable[[float], None],
        padding: Callable[[float], None],
        seconds: Callable[[float], None],
        batching: _BatchingSession | None = None,
    ) -> None:
        self._batch_size, self._padding, self._seconds = batch_size, padding, seconds
        self._batching = batching

    def observe(self, rows: int, padded: int, seconds: float) -> None:
        self._batch_size(rows)
        if padded > rows:
            self._padding(padded - rows)
        self._seconds(seconds)
        if self._batching is not None:
            self._batching.observe_batch(rows, padded)

    def observe_at_once(self, rows: int, padded: int, seconds: float) -> None:
        """A batched request run at once on an idle engine: its wait in the queue (none: TF Serving's
        queuing_latency 0) and its engine call, in one call (`Batcher`'s `observe_at_once`)."""
        if self._batching is not None:
            self._batching.observe_queued(0)
        self.observe(rows, padded, seconds)


class Metrics:
    def __init__(self, model_names: Iterable[str] = (), *, runtime: str = "onnxruntime", batching: bool = False) -> None:
        """`runtime`: the `runtime` label of TF Serving's runtime_latency (TF Serving writes "TF1" or
        "TFRT"; here the engine's name). `batching`: whether engine calls are batches (--enable_batching),
        which TF Serving's batching-session metrics then describe."""
        # Label values come from requests: names that are not served collapse into one value, so
        # a client sending random model names cannot grow the series without bound.
        self.model_names = frozenset(model_names)
        self.runtime = runtime
        self.batching = batching
        self.registry = CollectorRegistry(auto_describe=True)
        # The request path's records (see `Deferred`): kept in lists in one process; with
        # --workers, where a scrape reads every worker's values from their files, written at once.
        self.deferred = Deferred(enabled=not os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # TF Serving's metrics: prometheus_client holds the values, `render` writes them in TF's text.
        registry = self.registry
        # (`request_count` is the sum of `model_server_requests_total` over the calls TF Serving counts:
        # one counter per request, not two.)
        self.request_latency = tf_histogram(TF_REQUEST_LATENCY, registry)
        self.runtime_latency = tf_histogram(TF_RUNTIME_LATENCY, registry)
        self.example_counts = tf_histogram(TF_EXAMPLE_COUNTS, registry)
        self.example_count_total = Counter(TF_EXAMPLE_COUNT_TOTAL.name, "", TF_EXAMPLE_COUNT_TOTAL.labels, registry=registry)
        self.queuing_latency = tf_histogram(TF_QUEUING_LATENCY, registry)
        self.wrapped_run_count = Counter(TF_WRAPPED_RUN_COUNT.name, "", (), registry=registry)
        self.input_batch_size = tf_histogram(TF_INPUT_BATCH_SIZE, registry)
        self.processed_batch_size = tf_histogram(TF_PROCESSED_BATCH_SIZE, registry)
        self.padding_size = tf_histogram(TF_PADDING_SIZE, registry)
        self.warmup_latency = tf_histogram(TF_WARMUP_LATENCY, registry)
        self.warmup_records_read = Counter(TF_WARMUP_RECORDS_READ.name, "", TF_WARMUP_RECORDS_READ.labels, registry=registry)

        # The project's own.
        self.requests = Counter(
            REQUESTS_FAMILY,
            "Every request by model, API (as this server names them: predict, classify, metadata, status, ...), "
            "entrypoint (GRPC, REST) and status (the gRPC code name)",
            ["model_name", "API", "entrypoint", "status"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "model_server_batch_size",
            "Rows per engine call (before padding)",
            ["model_name", "signature"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_padding = Counter(
            "model_server_batch_padding_rows_total",
            "Rows added to reach an allowed batch size",
            ["model_name", "signature"],
            registry=registry,
        )
        self.engine_seconds = Histogram(
            "model_server_engine_seconds",
            "Time spent in one engine call",
            ["model_name", "signature"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        )
        self.queued_rows = Gauge(
            "model_server_batch_queue_rows",
            "Rows waiting in batch queues",
            ["model_name"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.model_state = Gauge(
            "model_server_model_version_state",
            "ModelVersionStatus state number (30 = AVAILABLE); the least ready worker's",
            ["model_name", "version"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        # Which engine and ONNX Runtime providers a loaded version really got (1 while AVAILABLE):
        # a GPU pod that fell back to the CPU shows providers="CPUExecutionProvider" here.
        self.model_runtime = Gauge(
            "model_server_model_version_runtime",
            "1 for the engine and providers a loaded version runs on (0 once it is not AVAILABLE)",
            ["model_name", "version", "backend", "providers"],
            registry=registry,
            multiprocess_mode="livemax",
        )

        # Label children, looked up once: `labels(...)` takes a lock and builds a tuple per call,
        # which is measurable on a request path that costs a few hundred microseconds in all.
        # (model, api, entrypoint, status) -> (its requests count, its TF request_latency or None)
        self._requests: dict[tuple[str, str, str, str], tuple[Callable[[float], None], Callable[[float], None] | None]] = {}
        self._engines: dict[tuple[str, str], EngineMetrics] = {}
        self._runtimes: dict[tuple[str, str], Callable[[float], None]] = {}  # (model, API) -> runtime_latency
        self._batching_session = _BatchingSession(self) if batching else None

    def observe_request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """Count one finished request; `status` is the gRPC code name it ended with."""
        key = (model, api, entrypoint, status)
        children = self._requests.get(key)
        if children is None:
            children = self._request_children(key)
        children[0](1)
        if children[1] is not None:
            children[1](int(seconds * 1e6))  # whole microseconds, as TF Serving's

    def _request_children(
        self, key: tuple[str, str, str, str]
    ) -> tuple[Callable[[float], None], Callable[[float], None] | None]:
        model, api, entrypoint, status = key
        name = model if model in self.model_names else UNKNOWN_MODEL
        tf_api = TF_API.get((api, entrypoint))
        deferred = self.deferred
        children = (
            deferred.counter(self.requests.labels(name, api, entrypoint, status)),
            # TF Serving times successful calls only.
            None
            if tf_api is None or status != "OK"
            else deferred.histogram(self.request_latency.labels(name, tf_api, entrypoint)),
        )
        if len(self._requests) < 10_000:  # request-chosen names collapse, but bound the cache too
            self._requests[key] = children
        return children

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
            deferred = self.deferred
            found = EngineMetrics(
                deferred.histogram(self.batch_size.labels(model, signature)),
                deferred.counter(self.batch_padding.labels(model, signature)),
                deferred.histogram(self.engine_seconds.labels(model, signature)),
                self._batching_session,
            )
            self._engines[(model, signature)] = found
        return found

    def observe_runtime(self, model: str, api: str, seconds: float) -> None:
        """TF Serving's runtime_latency: one successful request's time in the model (its
        Session::Run, batch queue included with batching), `api` "Predict", "Classify" or "Regress"."""
        observe = self._runtimes.get((model, api))
        if observe is None:
            series = self.runtime_latency.labels(model, api, self.runtime)
            observe = self._runtimes[(model, api)] = self.deferred.histogram(series)
        observe(int(seconds * 1e6))

    def batching_submitted(self, tensors: Mapping[str, Any]) -> None:
        """A request's tensors entering a batch queue: TF Serving's input_batch_size, one sample per
        input tensor (its batch dimension), as its batching session records them."""
        if self._batching_session is not None:
            observe = self._batching_session.observe_input
            for value in tensors.values():
                observe(value.shape[0])

    def batching_dequeued(self, rows: int, queued_seconds: float) -> None:
        """A task of `rows` rows (a request, or a piece of a split one) taken from a batch queue into
        a batch: TF Serving's queuing_latency, the time it waited (whole microseconds)."""
        if self._batching_session is not None:
            self._batching_session.observe_queued(int(queued_seconds * 1e6))

    def observe_examples(self, model: str, count: int) -> None:
        """The tf.Examples of one MultiInference request (TF Serving counts them there only)."""
        name = model if model in self.model_names else UNKNOWN_MODEL
        self.example_counts.labels(name).observe(count)
        self.example_count_total.labels(name).inc(count)

    def observe_warmup(self, model_path: str, status: str, seconds: float, records: int) -> None:
        """One replay of a version's warm-up file: `status` as TF Serving writes it ("OK", or
        "CODE: message" for a failure)."""
        self.warmup_latency.labels(model_path, status).observe(int(seconds * 1e6))
        self.warmup_records_read.labels(model_path, status).inc(records)

    def families(self) -> list[Any]:
        """This process's metric families, every waiting record added first (see `Deferred`)."""
        self.deferred.flush()
        return list(self.registry.collect())

    def render(self) -> bytes:
        """The exposition page: TF Serving's metrics in its exporter's text, then the project's."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # every worker's values, summed
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            families = list(merged.collect())
        else:
            families = self.families()
        by_name = {family.name: family for family in families}
        tf_families = {_family_name(spec): by_name.pop(_family_name(spec), None) for spec in TF_METRICS}
        tf_families[TF_REQUEST_COUNT.name] = _request_count(by_name.get(REQUESTS_FAMILY))
        lines: list[str] = []
        for spec in sorted(TF_METRICS, key=lambda m: m.path):
            render_tf(spec, tf_families[_family_name(spec)], lines)
        own = CollectorRegistry(auto_describe=False)
        own.register(_Families(list(by_name.values())))
        return ("\n".join(lines) + "\n").encode() + generate_latest(own)

    def set_model_served(self, name: str, served: bool) -> None:
        """A model added to (True) or removed from (False) the served list at run time.

        Added: its requests are counted under its name from now on (not `<unknown>`). Removed: every
        series labelled with its name (`model_name`, `model`) is dropped from every metric, so a removed
        model's series neither grow nor linger, and later requests naming it count as `<unknown>`.
        With `--workers`, values already written to the shared multiprocess files stay there
        (frozen: nothing counts under the name any more) until the server restarts.
        """
        self.model_names = self.model_names | {name} if served else self.model_names - {name}
        # Cached children were chosen under the old list (`<unknown>` ones, or the model's own).
        for key in [key for key in self._requests if key[0] == name]:
            del self._requests[key]
        if served:
            return
        for engine_key in [engine_key for engine_key in self._engines if engine_key[0] == name]:
            del self._engines[engine_key]
        for runtime_key in [runtime_key for runtime_key in self._runtimes if runtime_key[0] == name]:
            del self._runtimes[runtime_key]
        for metric in list(vars(self).values()):
            if not isinstance(metric, MetricWrapperBase):
                continue
            # The model's label is `model_name`, or `model` in TF Serving's example counts.
            for label in {"model_name", "model"} & set(metric._labelnames):
                index = metric._labelnames.index(label)
                for labels in list(metric._metrics):
                    if labels[index] == name:
                        metric.remove(*labels)


# Records one deferred series holds before adding them to its values itself (see `Deferred`).
DEFERRED_LIMIT = 1024


class Deferred:
    """Histogram observations and counter increments kept in a list per series and added to
    prometheus_client's values in bulk: at every scrape (`flush`, which `Metrics.families` calls
    first, so a page is always exact) and by the series itself once `limit` records wait.

    Why: under load the event loop's thread is busy all the time, and a call into prometheus_client
    (a method, its lock, the value's lock, for each of a request's 5 to 10 records) costs many times
    what it costs timed alone, as its code is evicted between requests: without any metric the
    server answered 7% more requests (h2load, digits, 32 streams, 2-core VM). A list append costs
    little wherever it runs, and the bulk addition runs its loop hot.

    Appending is atomic (under the GIL, and under a list's own lock without one), so engine threads
    and the event loop record without a lock; a fold takes what is there by length and leaves what
    arrives meanwhile, under `_lock` so that two folds never take the same records. With `enabled`
    False (--workers: every process's values live in shared files that a scrape of any worker
    reads, so none can wait for this process's flush) records go to prometheus_client at once.
    """

    def __init__(self, enabled: bool = True, limit: int = DEFERRED_LIMIT) -> None:
        self.enabled, self.limit = enabled, limit
        self._lock = threading.Lock()
        # id(series) -> (a weak reference to the series, its record function, its fold). Weak: a
        # series removed from its metric (`Metrics.set_model_served`) is dropped here at a flush.
        self._series: dict[int, tuple[weakref.ref[Any], Callable[[float], None], Callable[[], None]]] = {}

    def histogram(self, histogram: Any) -> Callable[[float], None]:
        """The record function of a Histogram (without labels, or one labelled child)."""
        if not self.enabled:
            return observer(histogram)
        layout = _histogram_layout(histogram)
        if layout is None:
            return observer(histogram)
        bounds, buckets, total = layout

        def add(values: list[float]) -> None:
            total.inc(sum(values))  # (a NaN in the sum and in no bucket, as prometheus_client does)
            found = collections.Counter(bisect.bisect_left(bounds, value) for value in values if value == value)
            for index, count in found.items():
                buckets[index].inc(count)

        return self._deferring(histogram, add)

    def counter(self, counter: Any) -> Callable[[float], None]:
        """The record function (the amount, >= 0) of a Counter (without labels, or one child)."""
        value = getattr(counter, "_value", None)
        if not self.enabled or not callable(getattr(value, "inc", None)):
            return cast(Callable[[float], None], counter.inc)
        assert value is not None
        return self._deferring(counter, lambda amounts: value.inc(sum(amounts)))

    def _deferring(self, series: Any, add: Callable[[list[float]], None]) -> Callable[[float], None]:
        with self._lock:  # (one record function per series, even when two threads ask at once)
            known = self._series.get(id(series))
            if known is not None and known[0]() is series:
                return known[1]
            waiting: list[float] = []
            lock, limit = self._lock, self.limit

            def fold() -> None:  # (under `lock`)
                count = len(waiting)
                if count:
                    taken = waiting[:count]
                    del waiting[:count]
                    add(taken)

            def record(amount: float) -> None:
                waiting.append(amount)
                if len(waiting) >= limit:
                    with lock:
                        fold()

            self._series[id(series)] = (weakref.ref(series), record, fold)
            return record

    def flush(self) -> None:
        """Add every waiting record to its series' values."""
        with self._lock:
            for key, (series, _record, fold) in list(self._series.items()):
                fold()
                if series() is None:
                    del self._series[key]


def _histogram_layout(histogram: Any) -> tuple[list[float], list[Any], Any] | None:
    """A Histogram's sorted bounds, bucket values and sum value, if laid out as the pinned
    prometheus_client lays it out (else None)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if (
        isinstance(bounds, list)
        and isinstance(buckets, list)
        and len(bounds) == len(buckets) > 0
        and bounds[-1] == math.inf
        and callable(getattr(total, "inc", None))
    ):
        return bounds, buckets, total
    return None


def observer(histogram: Any) -> Callable[[float], None]:
    """`histogram.observe` (a Histogram without labels, or one labelled child), with the bucket found
    by bisection: prometheus_client scans the bounds one by one in Python and checks the metric's
    kind on every call, which on TF Serving's 33 to 52 exponential buckets costs a request several
    microseconds over its 4 to 8 observations. The values are prometheus_client's own (its locks,
    its multiprocess files): only the search differs, and a value equal to a bound lands in that
    bucket, as `value <= bound` puts it. Falls back to `observe` if the object is not laid out as
    the pinned prometheus_client lays it out."""
    layout = _histogram_layout(histogram)
    if layout is None:
        return cast(Callable[[float], None], histogram.observe)
    sorted_bounds, bucket_values, total_value = layout

    def observe(amount: float) -> None:
        total_value.inc(amount)
        if amount == amount:  # (NaN: in the sum and in no bucket, as prometheus_client does)
            bucket_values[bisect.bisect_left(sorted_bounds, amount)].inc(1)

    return observe


def tf_histogram(spec: TfMetric, registry: CollectorRegistry) -> Histogram:
    # Internal bounds just under TF's limits, so prometheus_client's `value <= bound` puts a value in
    # the bucket TF's `value < limit` does; `render` writes TF's own limits.
    return Histogram(
        spec.name, "", spec.labels, buckets=[*map(_below, spec.buckets), math.inf], registry=registry
    )


class _BatchingSession:
    """TF Serving's batching-session metrics (thread pool "" and no model label, as TF Serving's)."""

    def __init__(self, metrics: Metrics) -> None:
        deferred = metrics.deferred
        self._runs = deferred.counter(metrics.wrapped_run_count)
        self._processed = deferred.histogram(metrics.processed_batch_size)
        self.observe_input = deferred.histogram(metrics.input_batch_size)  # (rows)
        self.observe_queued = deferred.histogram(metrics.queuing_latency.labels(BATCHING_THREAD_POOL))  # (us)
        self._padding_metric = metrics.padding_size
        self._deferred = deferred
        self._padding: dict[int, Callable[[float], None]] = {}  # execution batch size -> its record

    def observe_batch(self, rows: int, padded: int) -> None:
        self._runs(1)
        self._processed(padded)
        observe = self._padding.get(padded)
        if observe is None:
            observe = self._padding[padded] = self._deferred.histogram(self._padding_metric.labels(str(padded)))
        observe(padded - rows)


class _Families(Collector):
    """Already collected metric families, for `generate_latest`."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def _request_count(requests: Any) -> Any:
    """TF Serving's request_count{model_name,status}: the project's requests counter summed over
    the calls TF Serving counts (see `TF_API`)."""
    counts: dict[tuple[str, str], float] = {}
    for sample in requests.samples if requests is not None else ():
        labels = sample.labels
        if sample.name.endswith("_total") and (labels.get("API"), labels.get("entrypoint")) in TF_API:
            key = (labels["model_name"], labels["status"])
            counts[key] = counts.get(key, 0.0) + sample.value
    family = CounterMetricFamily(TF_REQUEST_COUNT.name, "", labels=TF_REQUEST_COUNT.labels)
    for (model, status), value in counts.items():
        family.add_metric([model, status], value)
    return family


def _family_name(spec: TfMetric) -> str:
    """The name prometheus_client files a TF metric under (it drops a counter's `_total`)."""
    if spec.kind == "counter" and spec.name.endswith("_total"):
        return spec.name[: -len("_total")]
    return spec.name


def render_tf(spec: TfMetric, family: Any, lines: list[str]) -> None:
    """Append one TF metric as TF Serving's exporter writes it (prometheus_exporter.cc)."""
    lines.append(f"# TYPE {spec.name} {spec.kind}")
    if family is None:
        return
    if spec.kind == "histogram":
        _render_tf_histogram(spec, family.samples, lines)
        return
    values: dict[tuple[str, ...], float] = {}
    for sample in family.samples:
        if sample.name.endswith("_created"):
            continue
        values[tuple(sample.labels.get(name, "") for name in spec.labels)] = sample.value
    for labels, value in sorted(values.items()):
        if not spec.labels and value == 0:
            continue  # TF makes an unlabelled cell on first use; prometheus_client at start
        lines.append(f"{spec.name}{{{_tf_labels(spec.labels, labels)}}} {int(value)}")


def _render_tf_histogram(spec: TfMetric, samples: Iterable[Any], lines: list[str]) -> None:
    index = {_below(limit): i for i, limit in enumerate(spec.buckets)}
    index[math.inf] = len(spec.buckets)
    cumulative: dict[tuple[str, ...], list[float | None]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for sample in samples:
        labels = tuple(sample.labels.get(name, "") for name in spec.labels)
        if sample.name.endswith("_bucket"):
            counts = cumulative.setdefault(labels, [None] * (len(spec.buckets) + 1))
            counts[index[float(sample.labels["le"])]] = sample.value
        elif sample.name.endswith("_sum"):
            sums[labels] = sample.value
    for labels in sorted(cumulative):
        total = cumulative[labels][-1] or 0
        if not spec.labels and total == 0:
            continue  # as for counters: no cell until first use
        text = _tf_labels(spec.labels, labels)
        prefix = f"{spec.name}_bucket{{{text}{',' if text else ''}"
        running = 0.0
        for i, count in enumerate(cumulative[labels]):
            running = running if count is None else count
            limit = _tf_number(spec.buckets[i]) if i < len(spec.buckets) else "+Inf"
            lines.append(f'{prefix}le="{limit}"}} {int(running)}')
        lines.append(f"{spec.name}_sum{{{text}}} {_tf_number(sums.get(labels, 0.0))}")
        lines.append(f"{spec.name}_count{{{text}}} {int(running)}")


def _tf_labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{name}="{_tf_label_value(value)}"' for name, value in zip(names, values, strict=True))
