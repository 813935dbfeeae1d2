"""The pure parts of `make bench BENCH_ARGS=--peers`: gRPC framing, request bodies, the h2load
parsers (on output captured from h2load 1.52), the /proc CPU reader, the table. Nothing here
installs KServe or starts a server."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from loadtests.peers import h2load, procstat, rest, wire
from loadtests.peers.run import KSERVE, ORT_ROW, PeerPoint, median_point, percentiles, table
from serving.proto import apis_pb2, tensor_pb2

# h2load -c 1 -t 1 -m 32 -D 2 against the minimal floor (1 image per request)
H2LOAD_GOOD = """\
starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 936.50 req/s, 134.52KB/s
requests: 1873 total, 1905 started, 1873 done, 1873 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1873 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 269.04KB (275494) total, 5.56KB (5694) headers (space savings 96.25%), 160.96KB (164824) data
                     min         max         mean         sd        +/- sd
time for request:     7.29ms     90.77ms     33.72ms     12.63ms    86.65%
time for connect:       96us        96us        96us         0us   100.00%
time to 1st byte:     7.51ms      7.51ms      7.51ms         0us   100.00%
req/s           :     936.23      936.23      936.23        0.00   100.00%
"""

# h2load -n 300 against a method the server does not have: HTTP 200, grpc-status UNIMPLEMENTED, no body
H2LOAD_UNIMPLEMENTED = """\
progress: 90% done
progress: 100% done

finished in 147.98ms, 2027.31 req/s, 109.55KB/s
requests: 300 total, 300 started, 300 done, 300 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 300 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 16.21KB (16601) total, 10.30KB (10545) headers (space savings 56.06%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:     3.23ms     16.43ms     12.38ms      2.75ms    76.00%
"""

H2LOAD_LOG = "1796154129930521\t200\t7291\n1796154129930524\t200\t8433\n1796154129930525\t503\t120\n\n"


# -- wire ------------------------------------------------------------------------------------------


def test_grpc_frame_is_flag_then_big_endian_length_then_message() -> None:
    assert wire.grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
    assert wire.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert wire.grpc_frame(b"x" * 300)[:5] == b"\x00\x00\x00\x01\x2c"
    assert wire.grpc_frame(b"z", compressed=True)[:1] == b"\x01"


def test_write_grpc_body_writes_the_framed_message(tmp_path: Path) -> None:
    path = wire.write_grpc_body(tmp_path / "body.grpc", b"hello")
    assert path.read_bytes() == b"\x00\x00\x00\x00\x05hello"


def test_predict_request_carries_the_images_in_tensor_content() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28, 1)
    request = apis_pb2.PredictRequest.FromString(wire.predict_request(images, model="digits"))
    assert request.model_spec.name == "digits"
    tensor = request.inputs["image"]
    assert tensor.dtype == tensor_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [2, 28, 28, 1]
    np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, "<f4").reshape(images.shape), images)


def test_predict_probabilities_reads_tensor_content_and_float_val() -> None:
    response = apis_pb2.PredictResponse()
    tensor = response.outputs["probabilities"]
    tensor.dtype = tensor_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_content = np.array([0.25, 0.75], "<f4").tobytes()
    np.testing.assert_array_equal(wire.predict_probabilities(response.SerializeToString()), [[0.25, 0.75]])
    tensor.ClearField("tensor_content")
    tensor.float_val.extend([0.5, 0.5])
    np.testing.assert_array_equal(wire.predict_probabilities(response.SerializeToString()), [[0.5, 0.5]])


def test_model_infer_request_uses_the_v2_field_numbers() -> None:
    images = np.ones((3, 28, 28, 1), np.float32)
    body = wire.model_infer_request(images, model="digits")
    # model_name is field 1 (tag 0x0a), inputs field 5 (0x2a), raw_input_contents field 7 (0x3a)
    assert body.startswith(b"\x0a\x06digits")
    assert b"\x2a" in body and b"\x3a" in body
    request_class, _ = wire.v2_messages()
    request = request_class.FromString(body)
    assert request.inputs[0].name == "image" and request.inputs[0].datatype == "FP32"
    assert list(request.inputs[0].shape) == [3, 28, 28, 1]
    assert request.raw_input_contents[0] == images.tobytes()


def test_model_infer_probabilities_reads_raw_and_typed_outputs() -> None:
    _, response_class = wire.v2_messages()
    raw = response_class(model_name="digits")
    raw.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    raw.raw_output_contents.append(np.array([0.25, 0.75], "<f4").tobytes())
    np.testing.assert_array_equal(wire.model_infer_probabilities(raw.SerializeToString()), [[0.25, 0.75]])
    typed = response_class(model_name="digits")
    output = typed.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    output.contents.fp32_contents.extend([0.5, 0.5])
    np.testing.assert_array_equal(wire.model_infer_probabilities(typed.SerializeToString()), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="no outputs"):
        wire.model_infer_probabilities(response_class().SerializeToString())


# -- h2load ----------------------------------------------------------------------------------------


def test_parse_summary_of_a_good_run() -> None:
    summary = h2load.parse_summary(H2LOAD_GOOD)
    assert summary.seconds == pytest.approx(2.0)
    assert summary.rps == pytest.approx(936.5)
    assert (summary.total, summary.done, summary.succeeded, summary.errors) == (1873, 1873, 1873, 0)
    assert summary.status_2xx == 1873
    assert summary.data_bytes == 164824
    assert h2load.check(summary, good_response_bytes=88) == ""


def test_check_catches_grpc_failures_that_h2load_counts_as_successes() -> None:
    summary = h2load.parse_summary(H2LOAD_UNIMPLEMENTED)
    assert summary.seconds == pytest.approx(0.14798)
    assert summary.succeeded == 300 and summary.data_bytes == 0
    assert "non-OK grpc-status" in h2load.check(summary, good_response_bytes=88)


def test_parse_summary_rejects_other_output() -> None:
    with pytest.raises(h2load.H2loadError, match="unrecognised"):
        h2load.parse_summary("connect error\n")


def test_parse_log_keeps_http_200_latencies_and_counts_the_rest() -> None:
    latencies, others = h2load.parse_log(H2LOAD_LOG)
    assert latencies == [pytest.approx(0.007291), pytest.approx(0.008433)]
    assert others == 1


def test_command_is_one_connection_with_streams_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2load.shutil, "which", lambda _name: "/usr/bin/h2load")
    args = h2load.command("http://127.0.0.1:1/m", Path("b"), 5, 0, 32, Path("log"))
    assert args[:9] == ["/usr/bin/h2load", "-c", "1", "-t", "1", "-m", "32", "-d", "b"]
    assert "content-type: application/grpc" in args and "te: trailers" in args
    assert args[args.index("-D") + 1] == "5" and "-n" not in args
    assert args[-1] == "http://127.0.0.1:1/m"
    assert "-n" in h2load.command("http://127.0.0.1:1/m", Path("b"), None, 200, 32, None)


def test_http1_command_is_connections_with_one_json_request_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2load.shutil, "which", lambda _name: "/usr/bin/h2load")
    args = h2load.command("http://127.0.0.1:1/v1/models/d:predict", Path("b.json"), 5, 0, 32, None, http1_connections=4)
    assert args[:10] == ["/usr/bin/h2load", "--h1", "-c", "4", "-t", "1", "-m", "1", "-d", "b.json"]
    assert "content-type: application/json" in args and "te: trailers" not in args


def test_run_refuses_anything_but_loopback() -> None:
    with pytest.raises(h2load.H2loadError, match=r"127\.0\.0\.1 only"):
        h2load.run("http://10.0.0.1:8500/m", Path("b"), 1, 0, 1)


# -- /proc CPU time --------------------------------------------------------------------------------


def _stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    # fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime ...
    return f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194304 10 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0\n"


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    stat = procstat.parse_stat(_stat(42, "py (worker) 1", 7, 100, 20, 3, 4))
    assert (stat.pid, stat.ppid, stat.utime, stat.stime, stat.cutime, stat.cstime) == (42, 7, 100, 20, 3, 4)
    assert stat.ticks == 127


def test_tree_cpu_seconds_sums_the_process_and_its_descendants(tmp_path: Path) -> None:
    processes = [
        _stat(10, "server", 1, 100, 50, 5, 5),  # 160 ticks
        _stat(11, "worker", 10, 200, 0),  # child: 200
        _stat(12, "helper", 11, 30, 10),  # grandchild: 40
        _stat(13, "other", 1, 9999, 9999),  # not ours
    ]
    for text in processes:
        folder = tmp_path / text.split()[0]
        folder.mkdir()
        (folder / "stat").write_text(text)
    (tmp_path / "self").mkdir()  # non-numeric entries are skipped
    (tmp_path / "99").mkdir()  # a process that vanished: no stat file
    assert procstat.tree_cpu_seconds(10, tmp_path, ticks_per_second=100) == pytest.approx(4.0)
    assert procstat.tree_cpu_seconds(12, tmp_path, ticks_per_second=100) == pytest.approx(0.4)
    with pytest.raises(ProcessLookupError):
        procstat.tree_cpu_seconds(77, tmp_path, ticks_per_second=100)


def test_tree_cpu_seconds_of_this_process_grows_with_work() -> None:
    before = procstat.tree_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    assert procstat.tree_cpu_seconds(os.getpid()) - before >= 0.05


# -- the table -------------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_in_ms() -> None:
    p50, p99 = percentiles([i / 1000 for i in range(1, 101)])
    assert (p50, p99) == (pytest.approx(51), pytest.approx(100))
    assert all(v != v for v in percentiles([]))


def test_table_gives_ratios_vs_kserve_and_ort() -> None:
    points = [
        PeerPoint(ORT_ROW, 1, 1000, 0, 1.0, 0.1, 0.1, 0.2),  # 1000 images/s, 100 µs/req
        PeerPoint(KSERVE, 1, 500, 0, 1.0, 0.5, 2.0, 3.0),  # 500 images/s, 1000 µs/req
        PeerPoint("this server, batching off", 1, 250, 0, 1.0, 0.5, 4.0, 5.0, "1 calls failed"),
    ]
    text = table(points, {"minimal grpc.aio floor": "PeerError: did not start\nlog..."})
    rows = {line.split(" | ")[0]: line for line in text.splitlines()}
    assert "| 1,000 | 1,000 | 100 | 0.10 | 0.20 | 2.00x | 1.00x | 0.10x | 1.00x |" in rows[f"| {ORT_ROW}"]
    ours = rows["| this server, batching off ⚠ 1 calls failed"]
    assert "| 0.50x | 0.25x | 2.00x | 20.00x |" in ours
    assert "not measured (PeerError: did not start)" in text


def test_median_point_is_one_whole_round() -> None:
    rounds = [PeerPoint("s", 1, requests, 0, 1.0, requests * 1e-4, 1.0 + requests, 2.0, "") for requests in (300, 100, 200)]
    assert median_point(rounds) is rounds[2]  # 200 req/s, with its own CPU and latencies
    assert median_point(rounds[:2]).requests == 100  # an even count: the lower middle
    assert median_point(rounds[:1]) is rounds[0]


def test_catdog_standin_serves_both_paths_as_the_bench_checks_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catdog bench's model, bodies and answers through a real server: float pixels and JPEG
    bytes answer what ONNX Runtime answers in-process on the same pixels."""
    import grpc

    from loadtests.peers.catdog import catdog_model, image_bytes_request, photo
    from loadtests.peers.catdog_standin import SIZE
    from loadtests.peers.run import ort_session
    from serving.images import decode_images
    from tests.serving.fixtures import start_server

    base, model_file, standin = catdog_model(tmp_path / "models", tmp_path / "standin")
    assert standin and model_file.is_file()
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "no-data"))
    jpeg, source = photo()
    assert jpeg[:2] == b"\xff\xd8" and "made here" in source
    pixels = np.random.default_rng(1).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    session = ort_session(model_file, 1)
    expected_float = session.run(None, {"image": pixels})[0]
    expected_jpeg = session.run(None, {"image": decode_images([jpeg], SIZE, SIZE)})[0]
    server = start_server(["--model_name", "catdog", "--model_base_path", str(base)], tmp_path / "server.log")
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            predict = channel.unary_unary(wire.PREDICT_METHOD)
            float_answer = wire.predict_probabilities(predict(wire.predict_request(pixels, "catdog"), timeout=30))
            jpeg_answer = wire.predict_probabilities(predict(image_bytes_request(jpeg), timeout=30))
    finally:
        assert server.stop() == 0, server.log()
    assert float_answer.shape == (1, 2)
    np.testing.assert_allclose(float_answer, expected_float, atol=1e-5)
    np.testing.assert_allclose(jpeg_answer, expected_jpeg, atol=1e-5)


def test_rest_body_is_tf_servings_row_format_and_round_trips_float32() -> None:
    images = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    body = rest.predict_json(images)
    parsed = np.asarray(json.loads(body)["instances"], dtype=np.float32)
    assert parsed.shape == (2, 28, 28, 1) and np.array_equal(parsed, images)  # exact: no rounding
    assert rest.predictions(b'{"predictions": [[0.25, 0.75]]}').tolist() == [[0.25, 0.75]]


def test_rest_table_gives_images_per_second_against_the_same_server_over_grpc() -> None:
    rows = {
        ("REST", "this server, batching off"): [PeerPoint("this server, batching off", 32, 250, 0, 1.0, 1.25, 15.0, 20.0)],
        ("gRPC", "this server, batching off"): [PeerPoint("this server, batching off", 32, 1000, 0, 1.0, 1.5, 10.0, 12.0)],
    }
    lines = rest.table(rows).splitlines()
    assert lines[2] == "| REST | this server, batching off | 32 | 250 | 8,000 | 5.00 | 15.00 | 20.00 | 0.25x |"
    assert lines[3] == "| gRPC | this server, batching off | 32 | 1,000 | 32,000 | 1.50 | 10.00 | 12.00 | 1.00x |"
