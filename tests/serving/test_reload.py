"""Models added and removed at run time: HandleReloadConfigRequest and the config file poll.

Real server processes over loopback. Over gRPC: a reload adds a model (served over gRPC and REST),
removes one (NOT_FOUND / 404 while the others keep serving, its metric series gone), changes a
version policy, answers bad configs with TF Serving's codes and messages, reports the growth of the
metrics named in `metric_names`, and lets the requests in flight on a removed model finish. With --model_config_file_poll_wait_seconds: a rewritten file is
applied, a broken one keeps the models served. No step waits on time: each polls the server's own
status (GetModelStatus, REST, metrics) with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import codec
from serving.backends import BackendOptions
from serving.config import ModelConfig
from serving.errors import FailedPrecondition
from serving.metrics import Metrics
from serving.proto import apis_pb2, apis_pb2_grpc, config_pb2
from serving.reload import ConfigReloader, tf_metric_values
from serving.repository import Repository, State
from serving.warmup import predict_log
from tests.serving.fixtures import (
    ServerProcess,
    reference_probabilities,
    start_server,
    write_config,
    write_tiny_version,
)
from tests.serving.test_examples_onnx import CLASSIFY, REGRESS, write_line_version
from tests.serving.test_repository import FakeBackend
from tests.serving.test_warmup import example_log, write_warmup

IMAGES = np.random.default_rng(7).uniform(0, 255, size=(2, 28, 28, 1)).astype(np.float32)
AVAILABLE = apis_pb2.ModelVersionStatus.AVAILABLE


# ---- helpers ----


def _entry(
    name: str,
    base_path: Path | str,
    *,
    platform: str = "tensorflow",
    specific: tuple[int, ...] = (),
    labels: dict[str, int] | None = None,
) -> config_pb2.ModelConfig:
    entry = config_pb2.ModelConfig(name=name, base_path=str(base_path), model_platform=platform)
    if specific:
        entry.model_version_policy.specific.versions.extend(specific)
    for label, version in (labels or {}).items():
        entry.version_labels[label] = version
    return entry


def _reload(target: str, *entries: config_pb2.ModelConfig) -> tuple[grpc.StatusCode, str]:
    request = apis_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.extend(entries)
    return _reload_request(target, request)


def _reload_request(target: str, request: apis_pb2.ReloadConfigRequest) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        try:
            response = apis_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    assert response.HasField("status") and response.status.error_code == 0
    return grpc.StatusCode.OK, ""


def _predict(target: str, name: str, images: np.ndarray = IMAGES, timeout: float = 10) -> tuple[int, np.ndarray]:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["image"].CopyFrom(codec.from_numpy(images))
    with grpc.insecure_channel(target) as channel:
        response = apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return response.model_spec.version.value, codec.to_numpy(response.outputs["probabilities"])


def _grpc_code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _states(target: str, name: str) -> dict[int, int]:
    request = apis_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(target) as channel:
        response = apis_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {s.version: s.state for s in response.model_version_status}


def _rest(server: ServerProcess, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_url + path, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _metrics(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=10) as response:
        return str(response.read().decode())


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _status_or_none(target: str, name: str) -> dict[int, int] | None:
    try:
        return _states(target, name)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return None


# ---- the gRPC reload ----


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha (v1), beta (v1), gamma (v1 and v2), slow (v1, tens of ms a row), broken (v1 whose
    file does not match its manifest)."""
    root = tmp_path_factory.mktemp("reload-models")
    write_tiny_version(root / "alpha", 1, seed=1)
    write_tiny_version(root / "beta", 1, seed=2)
    write_tiny_version(root / "gamma", 1, seed=3)
    write_tiny_version(root / "gamma", 2, seed=4)
    write_tiny_version(root / "slow", 1, seed=5, slow=True)
    broken = write_tiny_version(root / "broken", 1, seed=6)
    with (broken / "model.onnx").open("ab") as onnx_file:
        onnx_file.write(b"\0")
    return root


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[ServerProcess]:
    config = write_config(models / "models.config", {"alpha": models / "alpha"})
    process = start_server(["--model_config_file", str(config)], models / "server.log")
    yield process
    assert process.stop() == 0, process.log()


@pytest.mark.slow
def test_reload_adds_then_removes_a_model(server: ServerProcess, models: Path) -> None:
    target = server.grpc_target
    assert _status_or_none(target, "beta") is None
    # A relative base_path is read from the config file's folder, as at start-up.
    assert _reload(target, _entry("alpha", models / "alpha"), _entry("beta", "beta")) == (grpc.StatusCode.OK, "")
    # The answer came once beta was AVAILABLE: no waiting here.
    assert _states(target, "beta") == {1: AVAILABLE}
    version, probabilities = _predict(target, "beta")
    assert version == 1
    np.testing.assert_allclose(probabilities, reference_probabilities(models / "beta" / "1", IMAGES), atol=1e-5)
    status, body = _rest(server, "/v1/models/beta")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = _rest(server, "/v1/models/beta/metadata")
    assert status == 200 and "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    status, body = _rest(server, "/v1/models/beta:predict", {"instances": IMAGES.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], probabilities, atol=1e-5)
    assert 'model_name="beta"' in _metrics(server)  # its requests are counted under its name
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING

    assert _reload(target, _entry("alpha", models / "alpha")) == (grpc.StatusCode.OK, "")
    assert _grpc_code(lambda: _predict(target, "beta")) == grpc.StatusCode.NOT_FOUND
    assert _status_or_none(target, "beta") is None
    assert _rest(server, "/v1/models/beta")[0] == 404
    assert _rest(server, "/v1/models/beta:predict", {"instances": IMAGES.tolist()})[0] == 404
    assert _predict(target, "alpha")[0] == 1  # the others keep serving
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    # Its series go once its version has unloaded; calls naming it now count as <unknown>.
    _wait(lambda: 'model_name="beta"' not in _metrics(server), "beta's metric series to be dropped")


@pytest.mark.slow
def test_reload_changes_a_version_policy(server: ServerProcess, models: Path) -> None:
    target = server.grpc_target
    gamma = models / "gamma"
    assert _reload(target, _entry("alpha", models / "alpha"), _entry("gamma", gamma, specific=(1,)))[0] == grpc.StatusCode.OK
    assert _states(target, "gamma") == {1: AVAILABLE}
    assert _predict(target, "gamma")[0] == 1
    assert _reload(target, _entry("alpha", models / "alpha"), _entry("gamma", gamma, specific=(2,)))[0] == grpc.StatusCode.OK
    version, probabilities = _predict(target, "gamma")
    assert version == 2
    np.testing.assert_allclose(probabilities, reference_probabilities(gamma / "2", IMAGES), atol=1e-5)
    assert _states(target, "gamma") == {1: apis_pb2.ModelVersionStatus.END, 2: AVAILABLE}
    # Labels may point at AVAILABLE versions only (TF Serving's rule)...
    code, details = _reload(
        target, _entry("alpha", models / "alpha"), _entry("gamma", gamma, specific=(2,), labels={"canary": 1})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == "Request to assign label to version 1 of model gamma, which is not currently available for inference"
    code, _ = _reload(target, _entry("alpha", models / "alpha"), _entry("gamma", gamma, specific=(2,), labels={"stable": 2}))
    assert code == grpc.StatusCode.OK
    request = apis_pb2.GetModelStatusRequest()
    request.model_spec.name, request.model_spec.version_label = "gamma", "stable"
    with grpc.insecure_channel(target) as channel:
        response = apis_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    assert [s.version for s in response.model_version_status] == [2]


@pytest.mark.slow
def test_reload_errors_answer_as_tf_serving(server: ServerProcess, models: Path) -> None:
    target = server.grpc_target
    alpha = _entry("alpha", models / "alpha")
    served_before = _states(target, "alpha")
    expected = {
        "no config": (
            apis_pb2.ReloadConfigRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported",
        ),
    }
    custom = apis_pb2.ReloadConfigRequest()
    custom.config.custom_model_config.type_url = "type.googleapis.com/example.Custom"
    expected["custom config"] = (custom, *expected["no config"][1:])
    for case, (request, code, details) in expected.items():
        assert _reload_request(target, request) == (code, details), case

    cases = {
        "duplicate": (
            [alpha, _entry("alpha", models / "beta")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Illegal to list model alpha multiple times in config list",
        ),
        "platform": (
            [alpha, _entry("beta", models / "beta", platform="pytorch")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Model beta requests unsupported platform pytorch",
        ),
        "no platform": (
            [alpha, _entry("beta", models / "beta", platform="")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform, model name is beta",
        ),
        "platform change": (
            [_entry("alpha", models / "alpha", platform="onnx")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Illegal to change a model's platform. For model alpha platform was tensorflow and new "
            "platform requested is onnx",
        ),
    }
    for case, (entries, code, details) in cases.items():
        assert _reload(target, *entries) == (code, details), case
        assert _status_or_none(target, "beta") is None, case  # a refused config changes nothing
    assert _states(target, "alpha") == served_before

    # A new model that cannot load: UNKNOWN naming it (the config stays applied, as in TF
    # Serving), its status says why, and the server stays ready for the models it serves.
    code, details = _reload(target, alpha, _entry("broken", models / "broken"))
    assert code == grpc.StatusCode.UNKNOWN
    assert details.startswith("1 model(s) did not become available: {{name: broken due to error: version 1:")
    assert "sha256" in details or "model.onnx" in details
    assert _states(target, "broken") == {1: apis_pb2.ModelVersionStatus.END}
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    assert _reload(target, alpha)[0] == grpc.StatusCode.OK
    assert _status_or_none(target, "broken") is None


@pytest.mark.slow
def test_reload_reports_how_much_the_named_metrics_grew(server: ServerProcess, models: Path, tmp_path: Path) -> None:
    """ReloadConfigRequest.metric_names, as TF Serving answers it: one `metric` per distinct name, the
    growth of the metric's first cell (label order) during the reload; 0 for a histogram and for a
    name the server does not have. Here: the new model's warm-up file, replayed before the reload
    answers (a Predict, a Classify, a Regress and a MultiInference record)."""
    write_line_version(tmp_path / "line", 1)
    version = tmp_path / "line" / "1"
    records = [
        predict_log({"x": np.array([[1.0]], np.float32)}).SerializeToString(),
        example_log("classify_log", [1.0], (("classify_x", ""),)),
        example_log("regress_log", [2.0, 3.0]),
        example_log("multi_inference_log", [4.0], (("serving_default", REGRESS), ("classify_x", CLASSIFY))),
    ]
    write_warmup(version, records)  # and list it in the version's manifest
    request = apis_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.extend([_entry("alpha", models / "alpha"), _entry("line", tmp_path / "line")])
    names = [
        "/tensorflow/serving/model_warmup_records_read",
        "/tensorflow/serving/request_count",
        "/tensorflow/serving/request_latency",
        "/no/such/metric",
        "/tensorflow/serving/model_warmup_records_read",
    ]
    request.metric_names.extend(names)
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = apis_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    assert [(m.name, m.WhichOneof("value_increase"), m.int64_value_increase) for m in response.metric] == [
        ("/tensorflow/serving/model_warmup_records_read", "int64_value_increase", 4),
        ("/tensorflow/serving/request_count", "int64_value_increase", 0),
        ("/tensorflow/serving/request_latency", "int64_value_increase", 0),
        ("/no/such/metric", "int64_value_increase", 0),
    ]
    assert _states(server.grpc_target, "line") == {1: AVAILABLE}
    assert f':tensorflow:serving:model_warmup_records_read{{model_path="{version}",status="OK"}} 4' in _metrics(server)
    assert _reload(server.grpc_target, _entry("alpha", models / "alpha"))[0] == grpc.StatusCode.OK


def test_metric_values_are_read_as_tf_serving_reads_them() -> None:
    """TF Serving reads the int64 value of a metric's first cell, cells in label-value order."""
    metrics = Metrics(["alpha", "beta"], batching=True)
    metrics.observe_warmup("/models/b/1", "OK", 0.1, 5)
    metrics.observe_warmup("/models/a/1", "OK", 0.1, 2)
    for _ in range(3):
        metrics.observe_request("beta", "predict", "GRPC", "OK", 0.001)
    metrics.observe_request("alpha", "predict", "REST", "OK", 0.001)
    metrics.observe_request("alpha", "predict", "GRPC", "OK", 0.001)
    metrics.observe_request("alpha", "metadata", "GRPC", "OK", 0.001)  # not in TF's request_count
    metrics.observe_examples("beta", 4)
    names = [
        "/tensorflow/serving/model_warmup_records_read",
        "/tensorflow/serving/request_count",
        "/tensorflow/serving/request_example_count_total",
        "/tensorflow/serving/batching_session/wrapped_run_count",
        "/tensorflow/serving/runtime_latency",
        ":tensorflow:serving:request_count",  # the Prometheus spelling is no TF metric name
    ]
    assert tf_metric_values(metrics, names) == {
        "/tensorflow/serving/model_warmup_records_read": 2,  # model_path "/models/a/1" sorts first
        "/tensorflow/serving/request_count": 2,  # alpha, OK: the two predict calls
        "/tensorflow/serving/request_example_count_total": 4,
        "/tensorflow/serving/batching_session/wrapped_run_count": 0,
        "/tensorflow/serving/runtime_latency": 0,  # a histogram's cells hold no int64 value
        ":tensorflow:serving:request_count": 0,
    }


@pytest.mark.slow
def test_requests_in_flight_on_a_removed_model_complete(server: ServerProcess, models: Path) -> None:
    target = server.grpc_target
    alpha = _entry("alpha", models / "alpha")
    assert _reload(target, alpha, _entry("slow", models / "slow"))[0] == grpc.StatusCode.OK
    # Rows enough that the calls keep both engine threads busy for seconds: measured here, a pair of
    # calls is answered every ~0.37 s and the reload is answered 10-25 ms after the first pair. With
    # 64 rows (~30 ms a call) every call could end before the reload did, as the test then found.
    images = np.random.default_rng(3).uniform(0, 255, size=(1000, 28, 28, 1)).astype(np.float32)  # (--max_request_rows)
    expected = reference_probabilities(models / "slow" / "1", images)
    results: list[tuple[float, grpc.StatusCode, np.ndarray | None]] = []
    lock = threading.Lock()

    request = apis_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["image"].CopyFrom(codec.from_numpy(images))
    callers = 12
    connected = threading.Barrier(callers)

    def call() -> None:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            connected.wait(10)  # every caller connected: the calls go out together
            try:
                response = apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
                outcome = (time.monotonic(), grpc.StatusCode.OK, codec.to_numpy(response.outputs["probabilities"]))
            except grpc.RpcError as exc:
                outcome = (time.monotonic(), exc.code(), None)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    # Gate: a first call has been answered. The others, sent at the same moment on connected
    # channels, have been with the server for a whole engine call: queued for the engine or running.
    _wait(lambda: bool(results), "a first call on the slow model")
    assert _reload(target, alpha)[0] == grpc.StatusCode.OK
    removed_at = time.monotonic()
    assert _grpc_code(lambda: _predict(target, "slow")) == grpc.StatusCode.NOT_FOUND
    for thread in threads:
        thread.join(60)
    assert [code for _, code, _ in results] == [grpc.StatusCode.OK] * len(threads)
    for _, _, probabilities in results:
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    # Some calls were still running when the reload answered: the unload waited for them.
    assert any(ended > removed_at for ended, _, _ in results), "no call was in flight at the reload"
    assert "unloading slow version 1 (0 requests in flight)" not in server.log()


# ---- the config file poll ----


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.mark.slow
def test_config_file_poll_applies_changes_and_survives_a_broken_file(models: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "models.config", {"alpha": models / "alpha"})
    process = start_server(
        ["--model_config_file", str(config), "--model_config_file_poll_wait_seconds", "0.2"], tmp_path / "server.log"
    )
    target = process.grpc_target
    try:
        text = config.read_text()
        write_config(tmp_path / "next.config", {"alpha": models / "alpha", "beta": models / "beta"})
        _write_atomically(config, (tmp_path / "next.config").read_text())
        _wait(lambda: _status_or_none(target, "beta") == {1: AVAILABLE}, "beta to be AVAILABLE")
        assert _predict(target, "beta")[0] == 1
        assert _rest(process, "/v1/models/beta")[0] == 200

        _write_atomically(config, "model_config_list { config { name: 'alpha' base_path: ")  # cut short
        _wait(lambda: "cannot parse it" in process.log(), "the parse error to be logged")
        assert _predict(target, "alpha")[0] == 1 and _predict(target, "beta")[0] == 1
        time.sleep(1.0)  # five more polls of the same broken file: not logged again
        errors = [line for line in process.log().splitlines() if "--model_config_file" in line and "ERROR" in line]
        assert len(errors) == 1, errors
        assert "Traceback" not in process.log()

        _write_atomically(config, text)  # beta removed
        _wait(lambda: _rest(process, "/v1/models/beta")[0] == 404, "beta to be removed")
        assert _predict(target, "alpha")[0] == 1
        assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert process.stop() == 0, process.log()


# ---- the repository in-process (a fake engine) ----


async def test_a_new_base_path_swaps_versions_without_a_gap(tmp_path: Path) -> None:
    """The old folder's version serves until the new folder's is AVAILABLE, then unloads once the
    request holding it ends; a model added at run time that cannot load does not make the
    repository unready."""
    for folder in ("old", "new"):
        (tmp_path / folder / "1").mkdir(parents=True)
    engines: list[FakeBackend] = []

    def loader(platform: str, path: Path, options: BackendOptions) -> FakeBackend:
        engines.append(FakeBackend(path, options))
        return engines[-1]

    repository = Repository(
        [ModelConfig("m", tmp_path / "old")],
        "tensorflow",
        BackendOptions(),
        loader=loader,  # type: ignore[arg-type]
        unload_timeout_seconds=5,
    )
    (tmp_path / "old" / "1" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "new" / "1" / "saved_model.pb").write_bytes(b"")
    await repository.sync()
    old = repository.resolve("m")
    old.acquire()  # a request in flight on the old folder's version
    change = await repository.apply_config(
        [ModelConfig("m", tmp_path / "new"), ModelConfig("n", tmp_path / "missing")]
    )
    assert change.added == ("n",) and change.changed == ("m",) and "n" in change.not_available
    new = repository.resolve("m")
    assert new is not old and new.path == tmp_path / "new" / "1" and new.state == State.AVAILABLE
    assert old.state == State.UNLOADING and not engines[0].closed
    assert repository.all_available()  # "n" has never been available: it does not count yet
    old.release()
    assert change.retired is not None
    await asyncio.wait_for(change.retired, 5)
    assert old.state == State.END and engines[0].closed and not engines[1].closed
    await repository.close()


async def test_reload_is_refused_with_several_workers() -> None:
    """With --workers a gRPC call reaches one worker only: refused, pointing at the file poll (the
    code's mapping to FAILED_PRECONDITION over a real channel is checked with labels above)."""
    reloader = ConfigReloader(Repository([], "onnx", BackendOptions()), Metrics(), relative_to=None, workers=2)
    message = config_pb2.ModelServerConfig()
    message.model_config_list.config.add(name="m", base_path="/models/m", model_platform="tensorflow")
    with pytest.raises(FailedPrecondition, match="--model_config_file_poll_wait_seconds"):
        await reloader.handle_request(message)
