"""`python -m loadtests.bench --peers --model catdog`: a real model's requests, as clients send them.

Catdog (MobileNet at 224 px: the newest published `models/catdog` version, else the random-weight
stand-in of the same architecture, `catdog_standin.py`), one image per request, `--streams` in
flight on one connection (8 unless given), two paths:

* float pixels (`serving_default`, `image` float32 [1,224,224,3] in tensor_content: a 602 KB body)
  against ONNX Runtime in-process on one thread, on the same pixels;
* JPEG bytes (`predict_image_bytes`, one photo: `DATA_DIR/cats_vs_dogs/test/cats/cat.10000.jpg`
  when the offline data is there, else a 500x375 picture made here) against in-process decoding
  and resizing with the server's own code (`serving.images.decode_images`) plus the engine.

This server runs with batching off and on (`--preferred_batch_size 1`: a MobileNet's cost per row
does not fall with the batch). Rounds alternate as in the digits table; each row is its median round.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np

from loadtests.peers import wire
from loadtests.peers.catdog_standin import SIZE, write_catdog_standin
from loadtests.peers.run import (
    REPO_ROOT,
    Contender,
    PeerPoint,
    PeersConfig,
    measure,
    median_point,
    ort_reference,
    ort_session,
    percentiles,
    published_or_standin,
    verify,
)
from serving.images import decode_images
from serving.proto import apis_pb2, tensor_pb2

PHOTO = Path("cats_vs_dogs/test/cats/cat.10000.jpg")
IN_PROCESS_FLOAT = "ONNX Runtime in-process, one thread"
IN_PROCESS_JPEG = "decode + resize + ONNX Runtime in-process"


def catdog_model(models_dir: Path, standin_dir: Path) -> tuple[Path, Path, bool]:
    """(base path, model.onnx, is_standin): the newest published catdog version, else a stand-in."""
    return published_or_standin(models_dir, "catdog", standin_dir, write_catdog_standin)


def photo() -> tuple[bytes, str]:
    """A JPEG of a cat from the offline data, else one made here (a smooth 500x375 picture)."""
    data_dir = Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if (data_dir / PHOTO).is_file():
        return (data_dir / PHOTO).read_bytes(), str(data_dir / PHOTO)
    from PIL import Image

    y, x = np.mgrid[0:375, 0:500]
    pixels = np.stack([x * 255 // 500, y * 255 // 375, (x + y) * 255 // 875], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "a 500x375 gradient made here (no offline data)"


def image_bytes_request(jpeg: bytes) -> bytes:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = "catdog"
    request.model_spec.signature_name = "predict_image_bytes"
    tensor = request.inputs["image_bytes"]
    tensor.dtype = tensor_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=1)
    tensor.string_val.append(jpeg)
    return request.SerializeToString()


def decode_reference(session: object, jpeg: bytes, seconds: float, budget: int) -> PeerPoint:
    """Decode, resize and run in this process, back to back: what one request costs done directly."""
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    latencies: list[float] = []
    cpu_before, started = time.process_time(), time.perf_counter()
    while time.perf_counter() < started + seconds and len(latencies) < budget:
        call = time.perf_counter()
        session.run(None, {name: decode_images([jpeg], SIZE, SIZE)})  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - call)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    p50, p99 = percentiles(latencies)
    return PeerPoint(IN_PROCESS_JPEG, 1, len(latencies), 0, elapsed, cpu, p50, p99)


def run_catdog(config: PeersConfig) -> int:
    from loadtests.bench import run_server

    base, model_file, standin = catdog_model(config.models_dir, REPO_ROOT / ".bench" / "standin")
    if not shutil.which("h2load"):
        raise SystemExit("the catdog bench needs h2load (apt-get install nghttp2-client)")
    jpeg, source = photo()
    pixels = (np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32) * 255).astype(np.float32)
    session = ort_session(model_file, 1)
    name = session.get_inputs()[0].name
    expected = {
        "float": session.run(None, {name: pixels})[0],
        "jpeg": session.run(None, {name: decode_images([jpeg], SIZE, SIZE)})[0],
    }
    bodies = {"float": wire.predict_request(pixels, "catdog"), "jpeg": image_bytes_request(jpeg)}
    print(f"model: {'STAND-IN MobileNet with RANDOM weights' if standin else 'catdog'} ({model_file})")
    print(f"photo: {len(jpeg):,} bytes, {source}; load: h2load, 1 connection, {config.streams} in flight")
    rows: dict[tuple[str, str], list[PeerPoint]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        contenders: list[tuple[str, Contender, int]] = []
        for batching in (False, True):
            label = f"this server, batching {'on' if batching else 'off'}"
            print(f"==> starting {label}", flush=True)
            log = folder / f"catdog-{'on' if batching else 'off'}.log"
            server, target, _ = run_server("catdog", base, batching, config.threads, log, 0, config.workers, 1)
            stack.callback(server.stop)
            for path, body in bodies.items():
                contender = Contender(
                    label, server.process.pid, target, wire.PREDICT_METHOD, {1: body}, wire.predict_probabilities
                )
                sizes = verify(contender, {1: expected[path]})
                contenders.append((path, contender, sizes[1]))
        for round_number in range(1, config.rounds + 1):
            print(f"-- round {round_number} of {config.rounds}", flush=True)
            reference = replace(ort_reference(session, pixels, config.seconds, config.max_requests), server=IN_PROCESS_FLOAT)
            rows.setdefault(("float", IN_PROCESS_FLOAT), []).append(reference)
            rows.setdefault(("jpeg", IN_PROCESS_JPEG), []).append(
                decode_reference(session, jpeg, config.seconds, config.max_requests)
            )
            for path, contender, good_bytes in contenders:
                point = measure(contender, 1, good_bytes, config, "h2load", folder)
                rows.setdefault((path, contender.name), []).append(point)
                print(
                    f"    {path:5s} {contender.name:28s} {point.rps:7,.0f} req/s CPU {point.cpu_us_per_request:7,.0f} µs/req"
                    + (f"  ⚠ {point.problem}" if point.problem else ""),
                    flush=True,
                )
    print()
    print("| path | server | req/s | server CPU µs/req | p50 ms | p99 ms | vs in-process |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for path, reference_name in (("float", IN_PROCESS_FLOAT), ("jpeg", IN_PROCESS_JPEG)):
        reference = median_point(rows[(path, reference_name)])
        for (row_path, row_name), points in rows.items():
            if row_path != path:
                continue
            point = median_point(points)
            flag = f" ⚠ {point.problem}" if point.problem else ""
            print(
                f"| {'float pixels' if path == 'float' else 'JPEG bytes'} | {row_name}{flag} | {point.rps:,.0f} "
                f"| {point.cpu_us_per_request:,.0f} | {point.p50_ms:.2f} | {point.p99_ms:.2f} "
                f"| {point.rps / reference.rps:.2f}x |"
            )
    print(
        f"\nserver CPU: utime+stime of the server's process tree (/proc); in-process rows: this process's CPU. "
        f"Each row: the median of {config.rounds} rounds by req/s."
    )
    return 0
