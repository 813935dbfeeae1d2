"""Warm-up: TFRecord framing, TF Serving's PredictionLog, the replay at load, the synthetic warm-up.

A real server replays a version's `assets.extra/tf_serving_warmup_requests` before it serves (seen
in TF Serving's warm-up metrics: one replay, as many records as the file holds); Predict, Classify,
Regress and MultiInference records all run (the last three with the data plane's own checks); a
damaged file, a request the model refuses, or a kind TF Serving cannot replay either fails that
version's load with TF Serving's status and wording, and the other models serve. Without a file every signature is
warmed, string inputs included (text, image bytes).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from serving.backends import Backend, BackendOptions, load_backend
from serving.dataplane import TaskSpec, run_tasks_now
from serving.manifest import read_manifest, sha256_file, write_manifest
from serving.proto import prediction_log_pb2
from serving.repository import warm_up
from serving.warmup import (
    MAX_RECORDS,
    WARMUP_FILE,
    LoadingVersion,
    WarmupError,
    WarmupSettings,
    _crc32c_table,
    crc32c,
    masked_crc32c,
    predict_log,
    read_records,
    replay,
    write_records,
)
from tests.clients.tiny_models import write_tiny_catdog, write_tiny_sentiment
from tests.serving.fixtures import start_server, write_config, write_tiny_version
from tests.serving.test_examples_onnx import CLASSIFY, REGRESS, write_line_version

# PredictionLogs serialized with TF Serving's own protos (tensorflow_serving.apis.prediction_log_pb2,
# tensorflow-serving-api 2.21): the field numbers here must read them as TF Serving wrote them.
OFFICIAL_RECORDS = {
    "predict_log": "0a110a030a016d1a057365727665200732016f320d0a0b0a060a016d1a01731a0179",
    "classify_log": "12070a050a030a016d",
    "regress_log": "1a070a050a030a016d",
    "multi_inference_log": "22090a070a050a030a016d",
    "session_run_log": "2a070a050a030a016d",
    "predict_streamed_log": "3a070a050a030a016d",
}


def test_crc32c_check_value_and_the_table_agree() -> None:
    assert _crc32c_table(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    data = bytes(range(256)) * 3
    assert crc32c(data) == _crc32c_table(data)
    # TFRecord's mask: rotate right 15, add 0xa282ead8.
    crc = _crc32c_table(b"")
    assert masked_crc32c(b"") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_tfrecord_round_trip_and_damage_is_data_loss(tmp_path: Path) -> None:
    path = write_records(tmp_path / "a" / "records", [b"first", b"", b"x" * 1000])
    assert list(read_records(path)) == [b"first", b"", b"x" * 1000]
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] == 5 and raw[12:17] == b"first"
    broken = tmp_path / "broken"
    broken.write_bytes(raw[:14] + b"?" + raw[15:])  # one byte of the first record's data
    with pytest.raises(WarmupError, match=r"^DATA_LOSS: corrupted record at 0$"):
        list(read_records(broken))
    broken.write_bytes(raw[:-3])  # the last record cut short
    with pytest.raises(WarmupError, match=r"^DATA_LOSS: truncated record at 37$"):
        list(read_records(broken))


@pytest.mark.parametrize("kind", sorted(OFFICIAL_RECORDS))
def test_prediction_log_reads_tf_servings_bytes(kind: str) -> None:
    record = prediction_log_pb2.PredictionLog.FromString(bytes.fromhex(OFFICIAL_RECORDS[kind]))
    assert record.WhichOneof("log_type") == kind
    if kind == "predict_log":
        assert record.log_metadata.model_spec.name == "m" and record.log_metadata.timestamp_secs == 7
        assert list(record.log_metadata.saved_model_tags) == ["serve"]
        assert record.log_metadata.request_origin == "o"
        request = record.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == ("m", "s")
        assert list(request.output_filter) == ["y"]
        assert record.SerializeToString().hex() == OFFICIAL_RECORDS[kind]


def write_warmup(version_dir: Path, records: list[bytes] | bytes) -> None:
    """Write a warm-up file into a published version and list it in its manifest."""
    path = version_dir / WARMUP_FILE
    if isinstance(records, bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(records)
    else:
        write_records(path, records)
    manifest = read_manifest(version_dir, verify_files=False)
    files = {**manifest.files, WARMUP_FILE.as_posix(): sha256_file(path)}
    write_manifest(version_dir, dataclasses.replace(manifest, files=files))


def _images(rows: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(rows).uniform(0, 255, (rows, 28, 28, 1)).astype(np.float32)}


def test_replay_runs_every_record_and_refuses_what_tf_serving_refuses(tmp_path: Path) -> None:
    version = write_tiny_version(tmp_path / "tiny", 1)
    backend = load_backend("onnx", version, BackendOptions())
    assert replay(backend, version) is None  # no file: nothing to do
    seen: list[tuple[str, str, float, int]] = []
    settings = WarmupSettings(iterations=2, observe=lambda *args: seen.append(args))
    logs = [
        predict_log(_images(1)),
        predict_log(_images(3), model="tiny"),
        prediction_log_pb2.PredictionLog(),
    ]
    write_warmup(version, [log.SerializeToString() for log in logs])
    result = replay(backend, version, settings)
    assert result is not None and result.records == 3
    assert [(path, status, records) for path, status, _, records in seen] == [(str(version), "OK", 3)]

    refused = {
        "session_run_log": "UNIMPLEMENTED: Unsupported log_type for warmup: 5",
        "bad shape": "INVALID_ARGUMENT: input 'image' must have shape",
        "bad signature": 'FAILED_PRECONDITION: Serving signature key "nope" not found',
        "not a log": "INVALID_ARGUMENT: Failed to parse warmup record 0",
    }
    for case, message in refused.items():
        if case == "session_run_log":
            data = bytes.fromhex(OFFICIAL_RECORDS["session_run_log"])
        elif case == "bad shape":
            data = predict_log({"image": np.zeros((1, 28, 27, 1), np.float32)}).SerializeToString()
        elif case == "bad signature":
            data = predict_log(_images(1), signature="nope").SerializeToString()
        else:
            data = b"\xff\xff\xff"
        write_warmup(version, [data])
        with pytest.raises(WarmupError) as caught:
            replay(backend, version)
        assert str(caught.value).startswith(message), (case, caught.value)

    write_warmup(version, [predict_log(_images(1)).SerializeToString()] * (MAX_RECORDS + 1))
    with pytest.raises(WarmupError, match=r"Number of warmup records exceeds the maximum \(1000\)"):
        replay(backend, version)


def example_log(kind: str, xs: list[float], tasks: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A Classify, Regress or MultiInference PredictionLog on `line`'s feature `x`; `tasks` are
    MultiInference's (signature, method)."""
    record = prediction_log_pb2.PredictionLog()
    request = getattr(record, kind).request
    for x in xs:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    if kind == "multi_inference_log":
        for signature, method in tasks:
            task = request.tasks.add(method_name=method)
            task.model_spec.name = "line"
            task.model_spec.signature_name = signature
    else:
        request.model_spec.name = "line"
        request.model_spec.signature_name = tasks[0][0] if tasks else ""
    return record.SerializeToString()


def _engine_calls(backend: Backend) -> list[tuple[str, tuple[int, ...]]]:
    """Record (signature, shape of x) of every engine call the backend makes from now on."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    run = backend.run

    def recorded(signature: str, inputs: dict[str, np.ndarray], *args: object, **kwargs: object) -> dict[str, np.ndarray]:
        calls.append((signature, tuple(inputs["x"].shape)))
        return run(signature, inputs, *args, **kwargs)  # type: ignore[arg-type]

    backend.run = recorded  # type: ignore[method-assign]
    return calls


def test_classify_regress_and_multi_inference_logs_are_replayed_as_requests(tmp_path: Path) -> None:
    """TF Serving replays these kinds too (RunClassify, RunRegress, RunMultiInference): here through
    the data plane's own planning, inputs and output checks, so what a request would be refused
    for fails the load with the request's error."""
    write_line_version(tmp_path / "line", 7)
    version = tmp_path / "line" / "7"
    backend = load_backend("onnx", version, BackendOptions())
    answers = run_tasks_now(
        LoadingVersion("line", 7, backend),
        [TaskSpec("line", "", REGRESS), TaskSpec("line", "classify_x", CLASSIFY)],
        [{"x": np.array([2.0], np.float32)}, {"x": np.array([-1.0], np.float32)}],
        multi=True,
    )
    assert answers[0].values == [3.0, 1.5]
    assert answers[1].classes is not None and [label for label, _ in answers[1].classes[0]] == ["high", "low"]

    calls = _engine_calls(backend)
    write_warmup(
        version,
        [
            example_log("regress_log", [2.0, 3.0]),
            example_log("classify_log", [1.0], (("classify_x", ""),)),
            example_log("multi_inference_log", [4.0, 5.0, 6.0], (("serving_default", REGRESS), ("classify_x", CLASSIFY))),
        ],
    )
    result = replay(backend, version, WarmupSettings(iterations=2))
    assert result is not None and result.records == 3
    assert result.replayed == {"regress_log": 1, "classify_log": 1, "multi_inference_log": 1}
    assert calls == 2 * [("serving_default", (2, 1))] + 2 * [("classify_x", (1, 1))] + 2 * [
        ("serving_default", (3, 1)),
        ("classify_x", (3, 1)),
    ]

    refused = {
        # The request path's words (dataplane.py / TF Serving's regressor.cc, multi_inference.cc).
        "Input is empty.": (
            "INVALID_ARGUMENT: Input is empty. (warm-up record 0",
            example_log("regress_log", []),
        ),
        "no probabilities to classify": (
            "FAILED_PRECONDITION: signature 'serving_default' of model 'line' has no labelled 'probabilities'",
            example_log("classify_log", [1.0]),
        ),
        "not one value per example": (
            "INVALID_ARGUMENT: Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [?,2]",
            example_log("regress_log", [1.0], (("classify_x", ""),)),
        ),
        "unknown method": (
            "UNIMPLEMENTED: Unsupported signature method_name: bogus",
            example_log("multi_inference_log", [1.0], (("serving_default", "bogus"),)),
        ),
        "two values for x": (
            "INVALID_ARGUMENT: feature 'x' must hold 1 values per example (shape [N, 1])",
            _two_values_for_x(),
        ),
        "TF Serving's own bytes, no input": (
            "INVALID_ARGUMENT: Input is empty.",
            bytes.fromhex(OFFICIAL_RECORDS["regress_log"]),
        ),
        "TF Serving's own bytes, a task without a method": (
            "UNIMPLEMENTED: Unsupported signature method_name: ",
            bytes.fromhex(OFFICIAL_RECORDS["multi_inference_log"]),
        ),
    }
    for case, (message, data) in refused.items():
        write_warmup(version, [data])
        with pytest.raises(WarmupError) as caught:
            replay(backend, version)
        assert str(caught.value).startswith(message), (case, caught.value)


def _two_values_for_x() -> bytes:
    record = prediction_log_pb2.PredictionLog.FromString(example_log("classify_log", [1.0], (("classify_x", ""),)))
    record.classify_log.request.input.example_list.examples[0].features.feature["x"].float_list.value.append(2.0)
    return record.SerializeToString()


def test_without_a_file_string_signatures_are_warmed_too(tmp_path: Path) -> None:
    """Text and image-bytes signatures get a meaningful dummy (a sentence, a tiny PNG), so their
    engine cost is measured before the version serves; warm-up off runs nothing."""
    sentiment = load_backend("onnx", write_tiny_sentiment(tmp_path / "sentiment"), BackendOptions())
    catdog = load_backend("onnx", write_tiny_catdog(tmp_path / "catdog"), BackendOptions())
    assert "serving_default" in warm_up(sentiment, repeats=1)
    costs = warm_up(catdog, repeats=1)
    assert {"serving_default", "predict_image_bytes"} <= set(costs)
    assert all(cost.fixed > 0 for cost in costs.values())
    assert warm_up(catdog, settings=WarmupSettings(enabled=False)) == {}


def _status(rest_url: str, model: str) -> dict:
    with urllib.request.urlopen(f"{rest_url}/v1/models/{model}", timeout=10) as response:
        return json.loads(response.read())["model_version_status"][0]


def test_a_server_replays_the_file_at_load_and_a_bad_file_fails_the_version(tmp_path: Path) -> None:
    good = write_tiny_version(tmp_path / "good", 1)
    write_warmup(good, [predict_log(_images(rows)).SerializeToString() for rows in (1, 2, 4)])
    corrupt = write_tiny_version(tmp_path / "corrupt", 1)
    write_records(tmp_path / "records", [predict_log(_images(1)).SerializeToString()])
    damaged = bytearray((tmp_path / "records").read_bytes())
    damaged[20] ^= 0xFF  # a byte of the record's data: its CRC no longer matches
    write_warmup(corrupt, bytes(damaged))
    config = write_config(
        tmp_path / "models.config", {"good": tmp_path / "good", "corrupt": tmp_path / "corrupt"}
    )
    server = start_server(["--model_config_file", str(config)], tmp_path / "server.log", wait_serving=False)
    try:
        deadline = time.monotonic() + 60
        while (
            _status(server.rest_url, "corrupt")["state"] != "END"
            or _status(server.rest_url, "good")["state"] != "AVAILABLE"
        ):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        error = _status(server.rest_url, "corrupt")["status"]
        assert (
            "DATA_LOSS: corrupted record at 0. Please verify your warmup data is in TFRecord format."
            in (error["error_message"])
        ), error
        with urllib.request.urlopen(
            f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10
        ) as response:
            metrics = response.read().decode()
        assert (
            f':tensorflow:serving:model_warmup_latency_count{{model_path="{good}",status="OK"}} 1\n'
            in metrics
        )
        assert (
            f':tensorflow:serving:model_warmup_records_read{{model_path="{good}",status="OK"}} 3\n' in metrics
        )
        assert (
            f':tensorflow:serving:model_warmup_latency_count{{model_path="{corrupt}",'
            f'status="DATA_LOSS: corrupted record at 0"}} 1\n'
        ) in metrics
    finally:
        assert server.stop() == 0, server.log()
    assert "replayed 3 warm-up record(s)" in server.log()
