"""`metrics.Deferred`: records kept in lists and added in bulk give the values prometheus_client's
own calls give, at every flush, from any number of threads; a scrape sees every record."""

from __future__ import annotations

import gc
import math
import sys
import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from serving.metrics import LATENCY_BUCKETS_US, Deferred, Metrics, TfMetric, tf_histogram
from tests.serving.test_metrics_names import OBSERVED_VALUES

SPEC = TfMetric("/x/latency", "histogram", ("model_name",), LATENCY_BUCKETS_US)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def assert_same(ours: CollectorRegistry, theirs: CollectorRegistry) -> None:
    """Bucket counts equal; sums equal up to the order of the float additions (or both NaN)."""
    mine, reference = samples(ours), samples(theirs)
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        if key[0].endswith("_sum"):
            assert (math.isnan(value) and math.isnan(mine[key])) or math.isclose(mine[key], value, rel_tol=1e-9), key
        else:
            assert mine[key] == value, key


@settings(max_examples=200, deadline=None)
@given(st.lists(OBSERVED_VALUES, max_size=60), st.integers(min_value=1, max_value=8))
def test_a_deferred_histogram_fills_what_prometheus_client_fills(values: list[float], limit: int) -> None:
    """Flushed, and folding by itself every `limit` records: the same buckets as `observe`."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    deferred = Deferred(limit=limit)
    record = deferred.histogram(tf_histogram(SPEC, ours).labels("m"))
    reference = tf_histogram(SPEC, theirs).labels("m")
    for value in values:
        record(value)
        reference.observe(value)
    deferred.flush()
    assert_same(ours, theirs)


def test_records_wait_until_a_flush_or_the_limit() -> None:
    registry = CollectorRegistry()
    counter = Counter("calls", "", registry=registry)
    deferred = Deferred(limit=3)
    record = deferred.counter(counter)
    record(1)
    record(2)
    assert registry.get_sample_value("calls_total") == 0  # waiting
    record(1)  # the third: the series adds what waits itself
    assert registry.get_sample_value("calls_total") == 4
    record(5)
    deferred.flush()
    assert registry.get_sample_value("calls_total") == 9
    assert deferred.counter(counter) is record  # one record function per series


def test_threads_recording_and_flushing_at_once_lose_nothing() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    deferred = Deferred(limit=512)  # (folds by the series itself are rare: the flushes race the appends)
    histogram = tf_histogram(SPEC, ours).labels("m")
    counter = Counter("calls", "", registry=ours)
    per_thread, threads = 20_000, 4
    start = threading.Barrier(threads + 1)

    def work(seed: int) -> None:
        record, count = deferred.histogram(histogram), deferred.counter(counter)
        start.wait()
        for index in range(per_thread):
            record(float((index * 7919 + seed) % 5000))
            count(1)

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as the interpreter lets them
    try:
        for worker in workers:
            worker.start()
        start.wait()
        while any(worker.is_alive() for worker in workers):
            deferred.flush()  # racing the appends and the series' own folds
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    deferred.flush()
    reference = tf_histogram(SPEC, theirs).labels("m")
    for seed in range(threads):
        for index in range(per_thread):
            reference.observe(float((index * 7919 + seed) % 5000))
    assert ours.get_sample_value("calls_total") == per_thread * threads
    mine = {k: v for k, v in samples(ours).items() if not k[0].startswith("calls")}
    assert mine == samples(theirs)  # (integers: the sums are exact in any order)


def test_a_removed_series_is_dropped_at_a_flush() -> None:
    registry = CollectorRegistry()
    histogram = tf_histogram(SPEC, registry)
    deferred = Deferred()
    deferred.histogram(histogram.labels("gone"))(5.0)
    deferred.histogram(histogram.labels("kept"))(5.0)
    histogram.remove("gone")
    gc.collect()
    deferred.flush()
    assert len(deferred._series) == 1
    assert registry.get_sample_value(":x:latency_count", {"model_name": "kept"}) == 1


def test_off_records_at_once() -> None:
    """--workers: another process reads the values from their files at any moment."""
    registry = CollectorRegistry()
    counter = Counter("calls", "", registry=registry)
    deferred = Deferred(enabled=False)
    deferred.counter(counter)(2)
    deferred.histogram(tf_histogram(SPEC, registry).labels("m"))(7.0)
    assert registry.get_sample_value("calls_total") == 2
    assert registry.get_sample_value(":x:latency_count", {"model_name": "m"}) == 1


def test_the_page_counts_every_request_at_once() -> None:
    """`Metrics.render` flushes first: a request is on the next page, however few came before."""
    metrics = Metrics(["digits"], batching=True)
    metrics.observe_request("digits", "predict", "GRPC", "OK", 0.0012)
    metrics.engine("digits", "serving_default").observe(3, 4, 0.0004)
    metrics.batching_submitted({"image": np.zeros((3, 2))})
    metrics.batching_dequeued(3, 0.0001)
    text = metrics.render().decode()
    assert ':tensorflow:serving:request_count{model_name="digits",status="OK"} 1' in text
    assert ':tensorflow:serving:request_latency_count{model_name="digits",API="Predict",entrypoint="GRPC"} 1' in text
    assert 'model_server_batch_size_count{model_name="digits",signature="serving_default"} 1.0' in text
    assert 'model_server_batch_padding_rows_total{model_name="digits",signature="serving_default"} 1.0' in text
    assert ":tensorflow:serving:batching_session:wrapped_run_count{} 1" in text
    assert ':tensorflow:serving:batching_session:padding_size_count{execution_batch_size="4"} 1' in text
    assert ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name=""} 1' in text
    assert ":tensorflow:serving:batching_session:input_batch_size_count{} 1" in text


def test_a_request_run_at_once_is_recorded_as_a_dequeue_then_a_batch() -> None:
    """`EngineMetrics.observe_at_once` (the batcher's one hook on its fast path) writes what the
    two hooks it stands for write."""
    one_call, two_calls = Metrics(["digits"], batching=True), Metrics(["digits"], batching=True)
    one_call.engine("digits", "serving_default").observe_at_once(3, 4, 0.0004)
    two_calls.batching_dequeued(3, 0.0)
    two_calls.engine("digits", "serving_default").observe(3, 4, 0.0004)

    def page(metrics: Metrics) -> list[str]:
        return [line for line in metrics.render().decode().splitlines() if "_created" not in line]

    assert page(one_call) == page(two_calls)
    assert ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name=""} 1' in page(one_call)
