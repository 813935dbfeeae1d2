"""`python -m loadtests.bench --peers --rest`: TF Serving's REST predict with 32 digits per request.

The JSON path as REST clients use it: `POST /v1/models/digits:predict` with `{"instances": ...}`, 32
images of 28x28x1 random floats (a 561 KB body: 17-digit numbers, as `json.dumps` writes a float32
read as a double), over `--connections` HTTP/1.1 connections (4 unless given) with one request in
flight on each, from `h2load --h1`. Beside it, the same 32 images over gRPC `Predict` (one
connection, `--streams` in flight), to the same server process, for the ratio. This server runs with
batching off and on, as in the digits table (the newest published digits version, else the
random-weight stand-in); every answer is checked against ONNX Runtime in-process first, rounds
alternate, each row is its median round by req/s.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtests.peers import h2load, procstat, wire
from loadtests.peers.run import (
    REPO_ROOT,
    Contender,
    PeerError,
    PeerPoint,
    PeersConfig,
    digits_model,
    measure,
    median_point,
    ort_session,
    percentiles,
    start_digits_server,
    verify,
)

IMAGES = 32
CONNECTIONS = 4


def predict_json(images: np.ndarray) -> bytes:
    """`{"instances": [...]}`: TF Serving's row format, one 28x28x1 nested list per image."""
    return json.dumps({"instances": images.tolist()}).encode()


def predictions(body: bytes) -> np.ndarray:
    """`predictions` [N,10] out of a REST predict answer."""
    return np.asarray(json.loads(body)["predictions"], dtype=np.float32)


@dataclass(frozen=True)
class RestContender:
    name: str
    pid: int
    url: str  # http://127.0.0.1:PORT/v1/models/digits:predict
    good_bytes: int  # size of a good answer's body


def check_rest(name: str, pid: int, url: str, body: bytes, expected: np.ndarray) -> RestContender:
    """One real call, its predictions compared with ONNX Runtime's."""
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = response.read()
    got = predictions(answer)
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4):
        raise PeerError(f"{name}: REST answer differs from ONNX Runtime's (shape {got.shape})")
    return RestContender(name, pid, url, len(answer))


def measure_rest(contender: RestContender, body_file: Path, config: PeersConfig, connections: int, folder: Path) -> PeerPoint:
    """Warm up, then one timed point; the server's CPU is read around the timed run only."""
    log = folder / "h2load-rest.log"
    h2load.run(contender.url, body_file, None, 4 * connections, 1, http1_connections=connections)
    cpu_before = procstat.tree_cpu_seconds(contender.pid)
    summary = h2load.run(contender.url, body_file, config.seconds, 0, 1, log, http1_connections=connections)
    cpu = procstat.tree_cpu_seconds(contender.pid) - cpu_before
    latencies, other_statuses = h2load.parse_log(log.read_text())
    p50, p99 = percentiles(latencies)
    problem = h2load.check(summary, contender.good_bytes)
    return PeerPoint(
        contender.name, IMAGES, summary.succeeded, summary.errors + other_statuses, summary.seconds, cpu, p50, p99, problem
    )


def run_rest(config: PeersConfig, connections: int = CONNECTIONS) -> int:
    if not shutil.which("h2load"):
        raise SystemExit("the REST bench needs h2load (apt-get install nghttp2-client)")
    base, model_file, standin = digits_model(config.models_dir, REPO_ROOT / ".bench" / "standin")
    images = np.random.default_rng(0).random((IMAGES, 28, 28, 1), dtype=np.float32)
    session = ort_session(model_file, 1)
    expected = session.run(None, {session.get_inputs()[0].name: images})[0]
    body = predict_json(images)
    print(f"model: {'STAND-IN digits convnet with RANDOM weights' if standin else 'digits'} ({model_file})")
    print(
        f"load: REST {IMAGES} images per request ({len(body):,}-byte JSON body), h2load --h1, {connections} "
        f"connections, 1 request in flight on each; gRPC: the same images, 1 connection, {config.streams} "
        f"in flight; {config.seconds:g} s per point"
    )
    rows: dict[tuple[str, str], list[PeerPoint]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        body_file = folder / "rest.json"
        body_file.write_bytes(body)
        servers: list[tuple[RestContender, Contender, int]] = []
        for batching in (False, True):
            label = f"this server, batching {'on' if batching else 'off'}"
            print(f"==> starting {label}", flush=True)
            log = folder / f"rest-{'on' if batching else 'off'}.log"
            server = start_digits_server(stack, log, config=config, base=base, batching=batching)
            pid = server.process.pid
            rest = check_rest(label, pid, f"{server.rest_url}/v1/models/digits:predict", body, expected)
            grpc_contender = Contender(
                label,
                pid,
                server.grpc_target,
                wire.PREDICT_METHOD,
                {IMAGES: wire.predict_request(images)},
                wire.predict_probabilities,
            )
            servers.append((rest, grpc_contender, verify(grpc_contender, {IMAGES: expected})[IMAGES]))
        for round_number in range(1, config.rounds + 1):
            print(f"-- round {round_number} of {config.rounds}", flush=True)
            for rest, grpc_contender, good_bytes in servers:
                points = {
                    "REST": measure_rest(rest, body_file, config, connections, folder),
                    "gRPC": measure(grpc_contender, IMAGES, good_bytes, config, "h2load", folder),
                }
                for transport, point in points.items():
                    rows.setdefault((transport, rest.name), []).append(point)
                    print(
                        f"    {transport:4s} {rest.name:28s} {point.images_per_second:9,.0f} images/s "
                        f"CPU {point.cpu_us_per_request / 1000:6.2f} ms/req"
                        + (f"  ⚠ {point.problem}" if point.problem else ""),
                        flush=True,
                    )
    print()
    print(table(rows))
    print(
        f"\nserver CPU: utime+stime of the server's process tree (/proc). Each row: the median of {config.rounds} "
        "rounds by req/s; the ratio is against the same server's gRPC row."
    )
    return 0


def table(rows: dict[tuple[str, str], list[PeerPoint]]) -> str:
    """Markdown: one row per transport and server, images/s against the same server over gRPC."""
    lines = [
        "| transport | server | images/req | req/s | images/s | server CPU ms/req | p50 ms | p99 ms | images/s vs gRPC |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians = {key: median_point(points) for key, points in rows.items()}
    for (transport, server), point in sorted(medians.items(), key=lambda item: (item[0][1], item[0][0] != "REST")):
        reference = medians.get(("gRPC", server))
        ratio = f"{point.images_per_second / reference.images_per_second:.2f}x" if reference and reference.rps else "n/a"
        flag = f" ⚠ {point.problem}" if point.problem else ""
        lines.append(
            f"| {transport} | {server}{flag} | {point.images_per_request} | {point.rps:,.0f} | {point.images_per_second:,.0f} "
            f"| {point.cpu_us_per_request / 1000:.2f} | {point.p50_ms:.2f} | {point.p99_ms:.2f} | {ratio} |"
        )
    return "\n".join(lines)
