"""`make bench`: what one request costs, from the engine alone to the full gRPC/REST round trip.

Measures, on the published digits model (or any model with an `image` float input):

1. the engine alone (ONNX Runtime `run`, in this process) at batch 1 and 64: the floor;
2. a real server process on 127.0.0.1, called over gRPC (and REST) by client processes, one closed
   loop per concurrent caller, with and without `--enable_batching`: latency p50/p99 and req/s.

Every run is bounded by `--seconds` per point and `--max-requests`; traffic goes to 127.0.0.1 only.
The client processes share the machine with the server, so on a small machine the req/s figures
are a lower bound; the README states the machine each table came from.

`--peers` prints one table instead: this server beside KServe 0.21 and a minimal grpc.aio floor, at
1 and 32 images per request, driven by h2load when installed (see `loadtests/peers/run.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving import codec
from serving.launcher import ServerProcess, launch
from serving.manifest import read_manifest


@dataclass(frozen=True)
class Point:
    transport: str
    batching: bool
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def newest_version(base: Path) -> Path:
    versions = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())
    if not versions:
        raise SystemExit(f"no published version under {base}: run `make up` (or python -m export) first")
    return base / str(versions[-1])


def engine_floor(version_dir: Path, images: np.ndarray, repeats: int) -> dict[int, float]:
    """Median ms per ONNX Runtime call, one intra-op thread, at batch 1 and 64."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    result = {}
    for batch in (1, 64):
        feed = {name: images[:batch]}
        for _ in range(20):
            session.run(None, feed)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - started)
        result[batch] = statistics.median(times) * 1e3
    return result


async def closed_loop(
    send: Callable[[int], Awaitable[bool]], callers: int, seconds: float, budget: int
) -> tuple[list[float], int]:
    """`callers` loops, each sending its next request when the last answered, until `seconds` or
    `budget` requests; `send(index)` returns whether the request succeeded. Returns the latencies
    of the successful ones and the error count."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal errors
        while time.perf_counter() < deadline and len(latencies) + errors < budget:
            started = time.perf_counter()
            if await send(index):
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
            index += callers

    await asyncio.gather(*(caller(i) for i in range(callers)))
    return latencies, errors


def _grpc_worker(
    target: str,
    model: str,
    images: np.ndarray,
    callers: int,
    seconds: float,
    budget: int,
    queue: multiprocessing.Queue,
) -> None:
    import grpc

    from serving.proto import apis_pb2, apis_pb2_grpc

    async def run() -> tuple[list[float], int]:
        requests = []
        for image in images:
            request = apis_pb2.PredictRequest()
            request.model_spec.name = model
            codec.from_numpy(image[None], request.inputs["image"])
            requests.append(request)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)

            async def send(index: int) -> bool:
                try:
                    await stub.Predict(requests[index % len(requests)], timeout=10)
                    return True
                except grpc.aio.AioRpcError:
                    return False

            return await closed_loop(send, callers, seconds, budget)

    queue.put(asyncio.run(run()))


def _rest_worker(
    url: str,
    model: str,
    images: np.ndarray,
    callers: int,
    seconds: float,
    budget: int,
    queue: multiprocessing.Queue,
) -> None:
    import aiohttp

    async def run() -> tuple[list[float], int]:
        bodies = [json.dumps({"instances": image[None].tolist()}) for image in images]
        async with aiohttp.ClientSession() as session:

            async def send(index: int) -> bool:
                async with session.post(
                    f"{url}/v1/models/{model}:predict", data=bodies[index % len(bodies)]
                ) as response:
                    await response.read()
                    return response.status == 200

            return await closed_loop(send, callers, seconds, budget)

    queue.put(asyncio.run(run()))


def measure(
    transport: str,
    address: str,
    model: str,
    images: np.ndarray,
    concurrency: int,
    processes: int,
    seconds: float,
    budget: int,
    batching: bool,
) -> Point:
    """Closed-loop load: `concurrency` callers spread over client processes, for `seconds`."""
    worker = _grpc_worker if transport == "grpc" else _rest_worker
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    started = time.perf_counter()
    workers = [
        context.Process(
            target=worker, args=(address, model, images, share, seconds, budget // processes, queue)
        )
        for share in shares
    ]
    for process in workers:
        process.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for process in workers:
        process.join()
    elapsed = time.perf_counter() - started
    latencies = sorted(latency for part, _ in results for latency in part)
    errors = sum(e for _, e in results)
    measured = min(elapsed, seconds) if latencies else elapsed
    p50 = latencies[len(latencies) // 2] * 1e3 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else float("nan")
    return Point(transport, batching, concurrency, len(latencies), errors, measured, p50, p99)


def plot_points(points: Sequence[Point], path: Path, title: str) -> Path:
    """Throughput and p99 against concurrent callers, one line per transport and batching mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, tail) = plt.subplots(1, 2, figsize=(10, 4))
    series = sorted({(p.transport, p.batching) for p in points})
    for transport, batching in series:
        line = sorted((p for p in points if (p.transport, p.batching) == (transport, batching)), key=lambda p: p.concurrency)
        label = f"{transport}, batching {'on' if batching else 'off'}"
        style = "o-" if transport == "grpc" else "s--"
        callers = [p.concurrency for p in line]
        throughput.plot(callers, [p.rps for p in line], style, label=label)
        tail.plot(callers, [p.p99_ms for p in line], style, label=label)
    for axis, what in ((throughput, "requests per second"), (tail, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent callers (one request in flight each)")
        axis.set_ylabel(what)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run_server(
    model: str,
    base: Path,
    batching: bool,
    threads: int,
    log: Path,
    timeout_micros: int = 0,
    workers: int = 1,
    preferred_batch_size: int = 0,
) -> tuple[ServerProcess, str, str]:
    args = ["--model_name", model, "--model_base_path", str(base), "--file_system_poll_wait_seconds", "0"]
    args += ["--workers", str(workers)]
    if threads:
        args += ["--tensorflow_intra_op_parallelism", str(threads)]
    if batching:
        config = log.with_suffix(".batching")
        config.write_text(
            f"max_batch_size {{ value: 64 }} batch_timeout_micros {{ value: {timeout_micros} }} "
            "num_batch_threads { value: 2 } max_enqueued_batches { value: 1000 }"
        )
        args += ["--enable_batching", "--batching_parameters_file", str(config)]
        args += ["--preferred_batch_size", str(preferred_batch_size)]
    server = launch(args, log)
    return server, server.grpc_target, server.rest_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrent callers")
    parser.add_argument("--client-processes", type=int, default=2, help="client processes generating load")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each point")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per point")
    parser.add_argument("--transports", default="grpc,rest")
    parser.add_argument("--threads", type=int, default=0, help="server's intra-op threads (0: ORT default)")
    parser.add_argument(
        "--batch-timeout-micros", type=int, default=0, help="batching run: how long a batch may wait to fill"
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (--workers)")
    parser.add_argument(
        "--preferred-batch-size",
        type=int,
        default=32,
        help="batching runs: the server's --preferred_batch_size (32: where digits' cost per row stops "
        "falling on one engine thread; 0: batches fill to max_batch_size 64)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("reports/bench/bench.png"),
        help="PNG of req/s and p99 against callers per transport and batching mode (default reports/bench/bench.png)",
    )
    peers = parser.add_argument_group("--peers: this server beside KServe and a minimal gRPC floor")
    peers.add_argument("--peers", action="store_true", help="print the peer comparison table instead")
    peers.add_argument(
        "--streams", type=int, default=None, help="requests in flight on the one connection (digits 32, catdog 8)"
    )
    peers.add_argument(
        "--rounds", type=int, default=3, help="measure every contender this many times, alternating; report the median"
    )
    peers.add_argument(
        "--load-generator",
        choices=("auto", "h2load", "python"),
        default="auto",
        help="auto: h2load if installed",
    )
    peers.add_argument(
        "--rest",
        action="store_true",
        help="TF Serving's REST predict instead: 32 digits per JSON request over HTTP/1.1, beside the same over gRPC",
    )
    peers.add_argument(
        "--connections", type=int, default=4, help="--rest: HTTP/1.1 connections, one request in flight on each"
    )
    peers.add_argument(
        "--kserve-venv",
        type=Path,
        default=None,
        help="KServe's own venv, made if missing (default: .bench/kserve-venv in the repository)",
    )
    args = parser.parse_args(argv)
    if args.peers:
        from loadtests.peers.run import PeersConfig, run_peers

        catdog = args.model == "catdog"  # --model catdog: catdog's float and JPEG paths (peers/catdog.py)
        if not catdog and args.model != "digits":
            parser.error("--peers measures --model digits (beside KServe and the floor) or --model catdog")
        if catdog and args.rest:
            parser.error("--rest measures digits")
        if catdog:
            from loadtests.peers.catdog import run_catdog as run_peers
        if args.rest:
            from loadtests.peers.rest import run_rest

            def run_peers(config: PeersConfig) -> int:
                return run_rest(config, max(1, args.connections))

        return run_peers(
            PeersConfig(
                models_dir=args.models_dir,
                seconds=args.seconds,
                streams=args.streams or (8 if catdog else 32),
                threads=args.threads or 1,  # like-for-like: every contender on one intra-op thread
                workers=args.workers,
                batch_timeout_micros=args.batch_timeout_micros,
                preferred_batch_size=args.preferred_batch_size,
                load_generator=args.load_generator,
                kserve_venv=args.kserve_venv.resolve() if args.kserve_venv else None,
                max_requests=args.max_requests,
                json_path=args.json,
                rounds=max(1, args.rounds),
            )
        )

    base = args.models_dir / args.model
    version_dir = newest_version(base)
    manifest = read_manifest(version_dir, verify_files=False)
    spec = manifest.signatures["serving_default"].inputs["image"]
    shape = tuple(d for d in spec.shape[1:])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(256, *shape)).astype(np.float32)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"model: {args.model} version {version_dir.name} ({version_dir}), server workers: {args.workers}")
    floor = engine_floor(version_dir, images, repeats=200)
    print(
        f"engine alone (ONNX Runtime, 1 thread): batch 1 {floor[1]:.3f} ms, batch 64 {floor[64]:.3f} ms ({floor[64] / 64:.4f} ms/row)"
    )

    points: list[Point] = []
    concurrency = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        for batching in (False, True):
            server, grpc_target, rest_url = run_server(
                args.model,
                base.resolve(),
                batching,
                args.threads,
                Path(folder) / f"server-{batching}.log",
                args.batch_timeout_micros,
                args.workers,
                args.preferred_batch_size,
            )
            try:
                urllib.request.urlopen(f"{rest_url}/v1/models/{args.model}", timeout=10).read()
                for transport in args.transports.split(","):
                    address = grpc_target if transport == "grpc" else rest_url
                    for callers in concurrency:
                        point = measure(
                            transport,
                            address,
                            args.model,
                            images,
                            callers,
                            args.client_processes,
                            args.seconds,
                            args.max_requests,
                            batching,
                        )
                        points.append(point)
                        print(
                            f"{transport:4s} batching={'on ' if batching else 'off'} callers={callers:3d}: "
                            f"{point.rps:8.0f} req/s  p50 {point.p50_ms:7.2f} ms  p99 {point.p99_ms:7.2f} ms  errors {point.errors}",
                            flush=True,
                        )
            finally:
                server.stop()

    print("\n| transport | batching | callers | req/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for p in points:
        print(
            f"| {p.transport} | {'on' if p.batching else 'off'} | {p.concurrency} | {p.rps:.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.errors} |"
        )
    try:
        plotted = plot_points(points, args.plot, f"{args.model} v{version_dir.name}, {os.cpu_count()} cores, {args.workers} server worker(s)")
        print(f"\nplot: {plotted}")
    except ImportError:  # matplotlib comes with the train extra
        print("\nplot: skipped (matplotlib is not installed: pip install -e '.[train]')")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"engine_ms": floor, "points": [p.__dict__ | {"rps": p.rps} for p in points]}, indent=2
            )
        )
    return 1 if any(p.errors for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
