"""Metric names, labels and text as TF Serving's exporter writes them; health names as TF Serving's.

The expected data below is taken from TensorFlow Serving's sources (facts, not code):
- tensorflow_serving/servables/tensorflow/util.cc: request_count{model_name,status},
  request_latency{model_name,API,entrypoint}, runtime_latency{model_name,API,runtime} (buckets
  Exponential(10, 1.8, 33), microseconds), request_example_counts{model} (Exponential(1, 2, 15)),
  request_example_count_total{model};
- tensorflow_serving/batching/batching_session.cc and batching_util.h: batching_session/
  queuing_latency{thread_pool_name} (Exponential(100, 1.2, 52)), wrapped_run_count, input_batch_size,
  processed_batch_size, padding_size{execution_batch_size} (Exponential(1, 2, 14));
- tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc: model_warmup_latency and
  model_warmup_records_read {model_path,status};
- tensorflow_serving/model_servers/prediction_service_impl.cc, http_server.cc: API "Predict",
  "Classify", "Regress" over gRPC (GetModelMetadata and MultiInference are not counted), the URL's
  method over REST ("predict", "" for GET status/metadata), entrypoint "GRPC"/"REST", latency only
  for successful calls;
- tensorflow_serving/util/prometheus_exporter.cc (and its test): '/' -> ':', `# TYPE` lines and no
  `# HELP`, counters without `_total`, `NAME{} value` for unlabelled cells, buckets as absl::StrCat
  prints the limit, the last one `+Inf`, a value equal to a limit counted in the next bucket;
- tensorflow_serving/model_servers/server.cc: grpc.health.v1 names "ModelService" and
  "PredictionService" SERVING from the start (with --enable_grpc_healthcheck_service).
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from serving import codec
from serving.metrics import (
    LATENCY_BUCKETS_US,
    TfMetric,
    _below,
    exponential_buckets,
    observer,
    render_tf,
    tf_histogram,
)
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import start_server, write_tiny_version

pytestmark = pytest.mark.slow

TF_TYPES = {
    ":tensorflow:serving:request_count": "counter",
    ":tensorflow:serving:request_latency": "histogram",
    ":tensorflow:serving:runtime_latency": "histogram",
    ":tensorflow:serving:request_example_counts": "histogram",
    ":tensorflow:serving:request_example_count_total": "counter",
    ":tensorflow:serving:batching_session:queuing_latency": "histogram",
    ":tensorflow:serving:batching_session:wrapped_run_count": "counter",
    ":tensorflow:serving:batching_session:input_batch_size": "histogram",
    ":tensorflow:serving:batching_session:processed_batch_size": "histogram",
    ":tensorflow:serving:batching_session:padding_size": "histogram",
    ":tensorflow:serving:model_warmup_latency": "histogram",
    ":tensorflow:serving:model_warmup_records_read": "counter",
}
TF_LABELS = {
    ":tensorflow:serving:request_count": ("model_name", "status"),
    ":tensorflow:serving:request_latency": ("model_name", "API", "entrypoint"),
    ":tensorflow:serving:runtime_latency": ("model_name", "API", "runtime"),
    ":tensorflow:serving:batching_session:wrapped_run_count": (),
    ":tensorflow:serving:batching_session:processed_batch_size": (),
    ":tensorflow:serving:batching_session:padding_size": ("execution_batch_size",),
}
# Exponential(10, 1.8, 33) as TF Serving's page prints the limits.
LATENCY_LIMITS = [
    "10",
    "18",
    "32.4",
    "58.32",
    "104.976",
    "188.957",
    "340.122",
    "612.22",
    "1102",
    "1983.59",
    "3570.47",
    "6426.84",
    "11568.3",
    "20823",
    "37481.3",
    "67466.4",
    "121440",
    "218591",
    "393464",
    "708235",
    "1.27482e+06",
    "2.29468e+06",
    "4.13043e+06",
    "7.43477e+06",
    "1.33826e+07",
    "2.40887e+07",
    "4.33596e+07",
    "7.80473e+07",
    "1.40485e+08",
    "2.52873e+08",
    "4.55172e+08",
    "8.19309e+08",
    "1.47476e+09",
    "+Inf",
]
BATCH_LIMITS = [
    "1",
    "2",
    "4",
    "8",
    "16",
    "32",
    "64",
    "128",
    "256",
    "512",
    "1024",
    "2048",
    "4096",
    "8192",
    "+Inf",
]


def test_histogram_text_is_tf_servings() -> None:
    """TF Serving's own exporter test case (prometheus_exporter_test.cc, Histogram), line for line."""
    spec = TfMetric("/test/path/histogram", "histogram", ("status",), exponential_buckets(1, 2, 10))
    registry = CollectorRegistry()
    histogram = tf_histogram(spec, registry)
    for value in (2, 20, 200):
        histogram.labels("good").observe(value)
    lines: list[str] = []
    (family,) = registry.collect()
    render_tf(spec, family, lines)
    counts = [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    limits = ["1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "+Inf"]
    assert lines == [
        "# TYPE :test:path:histogram histogram",
        *(
            f':test:path:histogram_bucket{{status="good",le="{le}"}} {n}'
            for le, n in zip(limits, counts, strict=True)
        ),
        ':test:path:histogram_sum{status="good"} 222',
        ':test:path:histogram_count{status="good"} 3',
    ]
    assert TfMetric("0/path-total_count", "counter", ()).name == "_0:path:total_count"


def _predict(rows: int, model: str = "tiny") -> apis_pb2.PredictRequest:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["image"].CopyFrom(codec.from_numpy(np.zeros((rows, 28, 28, 1), np.float32)))
    return request


def _rest(url: str, body: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _series(text: str) -> dict[str, list[tuple[str, float]]]:
    """{sample name: [(label text, value)]} of the TF-named lines."""
    found: dict[str, list[tuple[str, float]]] = {}
    for match in re.finditer(r"^(:tensorflow:[^{ ]+)\{([^}]*)\} (\S+)$", text, re.M):
        found.setdefault(match[1], []).append((match[2], float(match[3])))
    return found


def test_a_server_writes_tf_servings_names_labels_and_health(tmp_path: Path) -> None:
    write_tiny_version(tmp_path / "tiny", 1)
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 0 } allowed_batch_sizes: 4 allowed_batch_sizes: 8"
    )
    server = start_server(
        [
            "--model_name=tiny",
            f"--model_base_path={tmp_path / 'tiny'}",
            "--enable_batching",
            f"--batching_parameters_file={tmp_path / 'batching.config'}",
            "--enable_grpc_healthcheck_service",
        ],
        tmp_path / "server.log",
    )
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "ModelService", "PredictionService", "tensorflow.serving.PredictionService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(_predict(1), timeout=10)
            stub.Predict(_predict(3), timeout=10)
            classify = apis_pb2.ClassificationRequest()
            classify.model_spec.name = "tiny"
            for _ in range(2):
                classify.input.example_list.examples.add().features.feature["image"].float_list.value.extend(
                    [0.0] * 784
                )
            stub.Classify(classify, timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.Predict(_predict(1, "ghost"), timeout=10)
            metadata = apis_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            metadata.model_spec.name = "tiny"
            stub.GetModelMetadata(metadata, timeout=10)  # TF Serving counts no metadata call
        body = json.dumps({"instances": np.zeros((1, 28, 28, 1)).tolist()}).encode()
        assert _rest(f"{server.rest_url}/v1/models/tiny:predict", body) == 200
        assert _rest(f"{server.rest_url}/v1/models/tiny") == 200
        assert _rest(f"{server.rest_url}/v1/models/tiny:predict", b'{"instances": [1]}') == 400
        with urllib.request.urlopen(
            f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10
        ) as response:
            text = response.read().decode()
    finally:
        assert server.stop() == 0, server.log()

    types = dict(re.findall(r"^# TYPE (:tensorflow:\S+) (\S+)$", text, re.M))
    assert types == TF_TYPES
    assert not re.search(r"^# HELP :tensorflow:", text, re.M)
    assert not re.search(r"^:tensorflow:\S*(_created|request_count_total)", text, re.M)
    series = _series(text)
    for name, labels in TF_LABELS.items():
        samples = series.get(name) or series[f"{name}_count"]
        for label_text, _ in samples:
            names = tuple(re.findall(r'(\w+)="', label_text))
            assert names == labels, (name, label_text)

    counts = dict(series[":tensorflow:serving:request_count"])
    # OK: 2 gRPC Predict, a Classify, a REST predict and the REST status call; never the metadata call.
    assert counts['model_name="tiny",status="OK"'] == 5, counts
    assert counts['model_name="tiny",status="INVALID_ARGUMENT"'] == 1
    assert counts['model_name="<unknown>",status="NOT_FOUND"'] == 1
    latency = dict(series[":tensorflow:serving:request_latency_count"])
    assert latency['model_name="tiny",API="Predict",entrypoint="GRPC"'] == 2
    assert latency['model_name="tiny",API="predict",entrypoint="REST"'] == 1
    assert latency['model_name="tiny",API="",entrypoint="REST"'] == 1  # the GET status call
    assert not any("NOT_FOUND" in key or "GetModelMetadata" in key for key in latency)
    buckets = [
        re.search(r'le="([^"]+)"', label_text)[1]  # type: ignore[index]
        for label_text, _ in series[":tensorflow:serving:request_latency_bucket"]
        if 'API="Predict"' in label_text
    ]
    assert buckets == LATENCY_LIMITS
    # One runtime sample per successful request, labelled with its API (warm-up runs are no requests).
    runtime = dict(series[":tensorflow:serving:runtime_latency_count"])
    assert runtime == {
        'model_name="tiny",API="Predict",runtime="onnxruntime"': 3,
        'model_name="tiny",API="Classify",runtime="onnxruntime"': 1,
    }
    # Every request that entered the batch queue (rows 1, 3, 2 and 1; the refused one never did).
    assert dict(series[":tensorflow:serving:batching_session:input_batch_size_count"]) == {"": 4}
    assert dict(series[":tensorflow:serving:batching_session:input_batch_size_sum"]) == {"": 7}
    queuing = [
        (re.search(r'le="([^"]+)"', label_text)[1], value)  # type: ignore[index]
        for label_text, value in series[":tensorflow:serving:batching_session:queuing_latency_bucket"]
    ]
    queued = dict(series[":tensorflow:serving:batching_session:queuing_latency_count"])
    assert queued == {'thread_pool_name=""': 4}
    assert len(queuing) == 53 and queuing[0][0] == "100" and queuing[-1] == ("+Inf", 4)
    # Batches of 1 and 3 rows padded to the allowed size 4: TF Serving's batching-session figures.
    assert dict(series[":tensorflow:serving:batching_session:wrapped_run_count"])[""] >= 2
    padding = [labels for labels, _ in series[":tensorflow:serving:batching_session:padding_size_count"]]
    assert 'execution_batch_size="4"' in padding
    processed = [
        re.search(r'le="([^"]+)"', label_text)[1]  # type: ignore[index]
        for label_text, _ in series[":tensorflow:serving:batching_session:processed_batch_size_bucket"]
    ]
    assert processed == BATCH_LIMITS
    # The project's own, beside them: every call, the metadata one included.
    assert (
        'model_server_requests_total{API="metadata",entrypoint="GRPC",model_name="tiny",status="OK"} 1.0'
        in text
    )
    assert "model_server_batch_size_count" in text


# Values at, just under and between TF's latency bounds, and NaN, infinity, negatives.
OBSERVED_VALUES = st.one_of(
    st.sampled_from([*LATENCY_BUCKETS_US, *map(_below, LATENCY_BUCKETS_US), 0.0, -1.0, math.inf, math.nan]),
    st.floats(min_value=-1e3, max_value=1e10),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(OBSERVED_VALUES, max_size=40))
def test_observer_fills_the_buckets_prometheus_client_fills(values: list[float]) -> None:
    """`observer`'s bisection against prometheus_client's own scan, on TF's bounds and values at,
    just under and between them (and NaN, infinity, negatives)."""
    spec = TfMetric("/x/latency", "histogram", ("model_name",), LATENCY_BUCKETS_US)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    observe = observer(tf_histogram(spec, ours).labels("m"))
    reference = tf_histogram(spec, theirs).labels("m")
    assert getattr(observe, "__self__", None) is not reference  # the fast path, not the fallback
    for value in values:
        observe(value)
        reference.observe(value)

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert repr(samples(ours)) == repr(samples(theirs))  # (repr: NaN sums compare equal)


def test_observer_falls_back_to_observe_on_an_unknown_layout() -> None:
    class Other:
        def observe(self, amount: float) -> None:
            self.seen = amount

    other = Other()
    observer(other)(3.0)
    assert other.seen == 3.0
