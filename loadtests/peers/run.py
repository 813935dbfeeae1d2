"""`python -m loadtests.bench --peers`: one table, this server beside KServe and a minimal floor.

Contenders, all started at once and then measured in turn for `--rounds` rounds (the median round
is reported, so a drift of a shared machine's speed touches all alike), each serving the same
digits ONNX file with ONNX Runtime on one intra-op thread (by default):

1. this server (`serving.launcher.launch`), batching off, then on (`batch_timeout_micros` 0), over
   TF Serving's Predict and then over the Open Inference Protocol's ModelInfer (the body KServe gets);
2. KServe 0.21 `ModelServer` with a minimal `kserve.Model` (`kserve_model.py`), in its own venv
   (`.bench/kserve-venv`, created on first use), over V2 gRPC `ModelInfer` with raw tensor bytes;
3. the minimal grpc.aio `Predict` floor (`minimal_grpc.py`);
4. and, as the reference, ONNX Runtime called in this process.

For 1 and 32 images per request: req/s, images/s, server CPU per request (utime + stime of the
server's process tree over the timed run), p50/p99 latency, ratios vs KServe and vs in-process ORT.
Before timing, one real call per contender and request size is decoded and compared with ORT's
answer. Load comes from h2load (one connection, `--streams` requests in flight, `--seconds` per
point) when it is installed, else from a Python grpc.aio closed loop; traffic goes to 127.0.0.1.
Every server started here is stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests.peers import h2load, procstat, wire
from loadtests.peers.standin import write_standin
from serving.launcher import ServerProcess

PEERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PEERS_DIR.parents[1]
KSERVE_REQUIREMENTS = ("kserve==0.21.*", "onnxruntime", "numpy")
IMAGES_PER_REQUEST = (1, 32)
GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
KSERVE = "KServe 0.21"
ORT_ROW = "ONNX Runtime in-process"


class PeerError(RuntimeError):
    """A contender could not be installed, started or checked; the message says which and why."""


@dataclass(frozen=True)
class PeersConfig:
    models_dir: Path
    seconds: float  # per point
    streams: int  # requests in flight (one connection)
    threads: int  # ONNX Runtime intra-op threads of this server and the floor
    workers: int  # this server's --workers
    batch_timeout_micros: int
    load_generator: str  # auto | h2load | python
    kserve_venv: Path | None  # None: .bench/kserve-venv in the repository
    max_requests: int  # cap per point for the Python load generator and the ORT loop
    json_path: Path | None = None
    preferred_batch_size: int = 32  # this server's --preferred_batch_size when batching
    rounds: int = 3  # each contender measured this many times, alternating; the median is reported


@dataclass(frozen=True)
class PeerPoint:
    server: str
    images_per_request: int
    requests: int
    errors: int
    seconds: float
    cpu_seconds: float
    p50_ms: float
    p99_ms: float
    problem: str = ""  # why the point cannot be trusted, '' when it can

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.rps * self.images_per_request

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else float("nan")


@dataclass
class Contender:
    """A running server and how to talk to it: gRPC method, a request body per size, a decoder."""

    name: str
    pid: int
    target: str  # 127.0.0.1:PORT
    method: str
    bodies: dict[int, bytes]  # images per request -> serialized request
    decode: Callable[[bytes], np.ndarray]  # serialized response -> probabilities [N,10]


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms, nearest rank; NaN without samples."""
    if not latencies:
        return float("nan"), float("nan")
    ordered = sorted(latencies)
    return (
        ordered[len(ordered) // 2] * 1e3,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
    )


# -- the model -------------------------------------------------------------------------------------


def digits_model(models_dir: Path, standin_dir: Path) -> tuple[Path, Path, bool]:
    """(base path, model.onnx, is_standin): the newest published digits version, else a stand-in."""
    return published_or_standin(models_dir, "digits", standin_dir, write_standin)


def published_or_standin(
    models_dir: Path, name: str, standin_dir: Path, write: Callable[[Path], Path]
) -> tuple[Path, Path, bool]:
    """(base path, model.onnx, is_standin): the newest published version of `name`, else the
    stand-in `write` publishes under `standin_dir/name` (returning its version folder)."""
    base = models_dir / name
    versions = sorted(
        (int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file())
        if base.is_dir()
        else []
    )
    if versions:
        return base.resolve(), (base / str(versions[-1]) / "model.onnx").resolve(), False
    version_dir = write(standin_dir / name)
    return (standin_dir / name).resolve(), (version_dir / "model.onnx").resolve(), True


def ort_session(model_file: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def ort_reference(session: Any, images: np.ndarray, seconds: float, budget: int) -> PeerPoint:
    """ORT `run` in this process, back to back for `seconds`: the engine's own cost per request."""
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: images})
    latencies: list[float] = []
    cpu_before, started = time.process_time(), time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline and len(latencies) < budget:
        call = time.perf_counter()
        session.run(None, {name: images})
        latencies.append(time.perf_counter() - call)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    p50, p99 = percentiles(latencies)
    return PeerPoint(ORT_ROW, len(images), len(latencies), 0, elapsed, cpu, p50, p99)


# -- contenders ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], own_group: bool, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout`; `own_group`: the process leads a session started for
    it here, and the signal goes to that group (its helpers too)."""
    if process.poll() is not None:
        return

    def send(signum: int) -> None:
        try:
            if own_group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def call_once(target: str, method: str, body: bytes, timeout: float = 10) -> bytes:
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        return bytes(channel.unary_unary(method)(body, timeout=timeout))


def wait_answering(
    process: subprocess.Popen[bytes], target: str, method: str, body: bytes, log: Path, timeout: float
) -> None:
    """Until one real call succeeds; PeerError if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"exited with status {process.returncode}:\n{tail(log)}")
        try:
            call_once(target, method, body, timeout=5)
            return
        except grpc.RpcError as error:
            last = f"{error.code()}: {error.details()}"
        time.sleep(0.25)
    raise PeerError(f"did not answer within {timeout:.0f} s (last: {last}):\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_this_server(
    stack: ExitStack,
    folder: Path,
    *,
    config: PeersConfig,
    base: Path,
    batching: bool,
    bodies: dict[int, bytes],
    v2: bool = False,
) -> Contender:
    """This server, called through TF Serving's Predict or (`v2`) the Open Inference Protocol's ModelInfer."""
    log = folder / f"server-batching-{'on' if batching else 'off'}{'-v2' if v2 else ''}.log"
    server = start_digits_server(stack, log, config=config, base=base, batching=batching)
    target = server.grpc_target
    name = this_server_name(batching, v2)
    pid = server.process.pid
    if v2:
        return Contender(name, pid, target, wire.MODEL_INFER_METHOD, bodies, wire.model_infer_probabilities)
    return Contender(name, pid, target, wire.PREDICT_METHOD, bodies, wire.predict_probabilities)


def start_digits_server(
    stack: ExitStack, log: Path, *, config: PeersConfig, base: Path, batching: bool
) -> ServerProcess:
    """This server on digits as the digits tables run it (threads, workers, batching parameters
    from `config`), stopped when `stack` closes."""
    from loadtests.bench import run_server

    server, _, _ = run_server(
        "digits",
        base,
        batching,
        config.threads,
        log,
        config.batch_timeout_micros,
        config.workers,
        config.preferred_batch_size,
    )
    stack.callback(server.stop)
    return server


def this_server_name(batching: bool, v2: bool) -> str:
    return f"this server{' V2 ModelInfer' if v2 else ''}, batching {'on' if batching else 'off'}"


def start_minimal(
    stack: ExitStack, folder: Path, *, config: PeersConfig, model_file: Path, bodies: dict[int, bytes]
) -> Contender:
    log = folder / "minimal.log"
    command = [sys.executable, "-m", "loadtests.peers.minimal_grpc", "--model", str(model_file)]
    command += ["--host", "127.0.0.1", "--port", "0", "--threads", str(config.threads)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(stop_process, process, False)
    deadline = time.monotonic() + 60
    while not (found := re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))):
        if process.poll() is not None or time.monotonic() > deadline:
            raise PeerError(f"the minimal gRPC server did not start:\n{tail(log)}")
        time.sleep(0.05)
    target = f"127.0.0.1:{found[1]}"
    wait_answering(process, target, wire.PREDICT_METHOD, bodies[1], log, 30)
    return Contender(
        "minimal grpc.aio floor", process.pid, target, wire.PREDICT_METHOD, bodies, wire.predict_probabilities
    )


def _kserve_versions(python: Path) -> str:
    """'kserve 0.21.x, onnxruntime y' when that Python imports KServe 0.21 and ORT, else ''."""
    probe = (
        "import importlib.metadata as m, kserve, onnxruntime, numpy; "
        "print(f\"kserve {m.version('kserve')}, onnxruntime {onnxruntime.__version__}\")"
    )
    try:
        found = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    versions = found.stdout.strip()
    return versions if found.returncode == 0 and versions.startswith("kserve 0.21.") else ""


def kserve_python(venv: Path) -> tuple[Path, str]:
    """The KServe venv's Python and its versions, creating the venv and installing KServe 0.21 into
    it when needed."""
    python = venv / "bin" / "python"
    if python.exists() and (versions := _kserve_versions(python)):
        return python, versions
    print(f"==> installing {' '.join(KSERVE_REQUIREMENTS)} into {venv} (once; reused afterwards)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        ["python3", "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", *KSERVE_REQUIREMENTS],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=1200)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PeerError(f"`{' '.join(step)}` failed: {error}") from error
        if done.returncode != 0:
            raise PeerError(f"`{' '.join(step)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if not (versions := _kserve_versions(python)):
        raise PeerError(f"installed, but {python} still does not import kserve 0.21 and onnxruntime")
    return python, versions


def start_kserve(
    stack: ExitStack, folder: Path, *, venv: Path, model_file: Path, bodies: dict[int, bytes]
) -> Contender:
    python, versions = kserve_python(venv)
    print(f"    {versions} ({venv})", flush=True)
    log = folder / "kserve.log"
    grpc_port, http_port = free_port(), free_port()
    command = [str(python), str(PEERS_DIR / "kserve_model.py"), "--model_file", str(model_file)]
    command += ["--model_name", "digits", "--grpc_port", str(grpc_port), "--http_port", str(http_port)]
    command += ["--enable_latency_logging", "false"]
    # scrub the project's venv from the environment: the KServe venv must stand on its own
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    stack.callback(stop_process, process, True)
    target = f"127.0.0.1:{grpc_port}"
    wait_answering(process, target, wire.MODEL_INFER_METHOD, bodies[1], log, 120)
    return Contender(
        KSERVE, process.pid, target, wire.MODEL_INFER_METHOD, bodies, wire.model_infer_probabilities
    )


def verify(contender: Contender, expected: dict[int, np.ndarray]) -> dict[int, int]:
    """One real call per request size, decoded and compared with ORT's answer; returns the size of
    a good answer on the wire (gRPC frame) per size, for `h2load.check`."""
    sizes = {}
    for count, body in contender.bodies.items():
        try:
            response = call_once(contender.target, contender.method, body)
        except grpc.RpcError as error:
            raise PeerError(f"{contender.name}: {count}-image call failed: {error}") from error
        answer, want = contender.decode(response), expected[count]
        if answer.shape != want.shape:
            raise PeerError(
                f"{contender.name}: {count} images: answer shape {answer.shape}, want {want.shape}"
            )
        if not np.allclose(answer, want, atol=1e-4):
            difference = float(np.abs(answer - want).max())
            raise PeerError(
                f"{contender.name}: {count} images: wrong answer (max difference {difference:.3g})"
            )
        sizes[count] = len(wire.grpc_frame(response))
    return sizes


# -- load ------------------------------------------------------------------------------------------


def python_load(
    target: str, method: str, body: bytes, seconds: float, streams: int, budget: int
) -> tuple[list[float], int, float]:
    """Fallback load generator: `streams` closed-loop callers on one grpc.aio channel (bench.closed_loop)."""
    from loadtests.bench import closed_loop

    async def run() -> tuple[list[float], int, float]:
        async with grpc.aio.insecure_channel(target, options=GRPC_OPTIONS) as channel:
            call = channel.unary_unary(method)

            async def send(_index: int) -> bool:
                try:
                    await call(body, timeout=30)
                    return True
                except grpc.aio.AioRpcError:
                    return False

            started = time.perf_counter()
            latencies, errors = await closed_loop(send, streams, seconds, budget)
            return latencies, errors, time.perf_counter() - started

    return asyncio.run(run())


def measure(
    contender: Contender, count: int, good_bytes: int, config: PeersConfig, generator: str, folder: Path
) -> PeerPoint:
    """Warm up, then one timed point; the server's CPU is read around the timed run only."""
    body = contender.bodies[count]
    if generator == "h2load":
        url = f"http://{contender.target}{contender.method}"
        body_file = wire.write_grpc_body(folder / f"body-{count}.grpc", body)
        log = folder / "h2load.log"
        h2load.run(url, body_file, None, requests=4 * config.streams, streams=config.streams)
        cpu_before = procstat.tree_cpu_seconds(contender.pid)
        summary = h2load.run(url, body_file, config.seconds, 0, config.streams, log)
        cpu = procstat.tree_cpu_seconds(contender.pid) - cpu_before
        latencies, other_statuses = h2load.parse_log(log.read_text())
        problem = h2load.check(summary, good_bytes)
        requests, errors, seconds = summary.succeeded, summary.errors + other_statuses, summary.seconds
    else:
        python_load(contender.target, contender.method, body, 0.5, config.streams, 4 * config.streams)
        cpu_before = procstat.tree_cpu_seconds(contender.pid)
        latencies, errors, seconds = python_load(
            contender.target, contender.method, body, config.seconds, config.streams, config.max_requests
        )
        cpu = procstat.tree_cpu_seconds(contender.pid) - cpu_before
        requests = len(latencies)
        problem = f"{errors} calls failed" if errors else ("" if requests else "no request succeeded")
    p50, p99 = percentiles(latencies)
    return PeerPoint(contender.name, count, requests, errors, seconds, cpu, p50, p99, problem)


# -- report ----------------------------------------------------------------------------------------


def median_point(points: list[PeerPoint]) -> PeerPoint:
    """Of one contender's rounds at one request size, the round with the median req/s (the lower
    of the two middle ones for an even count), so its CPU and latencies stay those of one run."""
    ordered = sorted(points, key=lambda point: point.rps)
    return ordered[(len(ordered) - 1) // 2]


def _ratio(value: float, reference: float | None) -> str:
    if reference is None or not reference or value != value or reference != reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def table(points: list[PeerPoint], failures: dict[str, str]) -> str:
    """Markdown: one row per contender and request size, ratios vs KServe and vs in-process ORT."""
    by = {(p.server, p.images_per_request): p for p in points}
    lines = [
        "| server | images/req | req/s | images/s | server CPU µs/req | p50 ms | p99 ms "
        "| images/s vs KServe | images/s vs ORT | CPU/req vs KServe | CPU/req vs ORT |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    servers = list(dict.fromkeys(p.server for p in points))
    for count in IMAGES_PER_REQUEST:
        kserve, ort = by.get((KSERVE, count)), by.get((ORT_ROW, count))
        for server in servers:
            point = by.get((server, count))
            if point is None:
                continue
            flag = f" ⚠ {point.problem}" if point.problem else ""
            lines.append(
                f"| {server}{flag} | {count} | {point.rps:,.0f} | {point.images_per_second:,.0f} "
                f"| {point.cpu_us_per_request:,.0f} | {point.p50_ms:.2f} | {point.p99_ms:.2f} "
                f"| {_ratio(point.images_per_second, kserve.images_per_second if kserve else None)} "
                f"| {_ratio(point.images_per_second, ort.images_per_second if ort else None)} "
                f"| {_ratio(point.cpu_us_per_request, kserve.cpu_us_per_request if kserve else None)} "
                f"| {_ratio(point.cpu_us_per_request, ort.cpu_us_per_request if ort else None)} |"
            )
    for server, why in failures.items():
        lines.append(f"| {server}: not measured ({why.splitlines()[0][:120]}) |" + " |" * 10)
    return "\n".join(lines)


@contextmanager
def _stopping_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` that stops the servers runs."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_peers(config: PeersConfig) -> int:
    bench_dir = REPO_ROOT / ".bench"
    base, model_file, standin = digits_model(config.models_dir, bench_dir / "standin")
    generator = config.load_generator
    if generator == "auto":
        generator = "h2load" if shutil.which("h2load") else "python"
    elif generator == "h2load" and not shutil.which("h2load"):
        raise SystemExit("--load-generator h2load: h2load is not installed (apt-get install nghttp2-client)")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(IMAGES_PER_REQUEST), 28, 28, 1)).astype(np.float32)
    batches = {count: images[:count] for count in IMAGES_PER_REQUEST}
    session = ort_session(model_file, 1)
    input_name = session.get_inputs()[0].name
    expected = {count: session.run(None, {input_name: batch})[0] for count, batch in batches.items()}
    predict_bodies = {count: wire.predict_request(batch) for count, batch in batches.items()}
    infer_bodies = {count: wire.model_infer_request(batch) for count, batch in batches.items()}

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"onnxruntime {metadata.version('onnxruntime')}"
    )
    if standin:
        print(
            f"model: STAND-IN digits convnet with RANDOM weights ({model_file}): no models/digits published"
        )
    else:
        print(f"model: digits {model_file}")
    if generator == "h2load":
        print(
            f"load: {h2load.version() or 'h2load'}, 1 connection, {config.streams} requests in flight, "
            f"{config.seconds:g} s per point"
        )
    else:
        print(
            f"load: h2load is NOT installed (apt-get install nghttp2-client): Python grpc.aio closed loop instead "
            f"(bench.closed_loop), 1 channel, {config.streams} callers, {config.seconds:g} s per point; "
            "the client's Python overhead caps req/s"
        )
    print(
        f"threads: ONNX Runtime {config.threads} intra-op thread(s) in this server and the floor, 1 in KServe and the "
        f"reference; this server: --workers {config.workers}, batching on = batch_timeout_micros "
        f"{config.batch_timeout_micros}, max_batch_size 64, --preferred_batch_size {config.preferred_batch_size}"
    )

    failures: dict[str, str] = {}
    starters: list[tuple[str, Callable[[ExitStack, Path], Contender]]] = [
        (
            this_server_name(batching, v2),
            functools.partial(
                start_this_server,
                config=config,
                base=base,
                batching=batching,
                bodies=infer_bodies if v2 else predict_bodies,
                v2=v2,
            ),
        )
        for v2 in (False, True)
        for batching in (False, True)
    ]
    starters.append(
        (
            KSERVE,
            functools.partial(
                start_kserve,
                venv=config.kserve_venv or bench_dir / "kserve-venv",
                model_file=model_file,
                bodies=infer_bodies,
            ),
        )
    )
    starters.append(
        (
            "minimal grpc.aio floor",
            functools.partial(start_minimal, config=config, model_file=model_file, bodies=predict_bodies),
        )
    )
    rounds: dict[tuple[str, int], list[PeerPoint]] = {}
    with _stopping_on_sigterm(), ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        # Every contender runs for the whole sitting (idle ones cost next to nothing), so the rounds
        # can alternate between them: a drift of the machine's speed then touches all alike.
        contenders: list[tuple[Contender, dict[int, int]]] = []
        for name, start in starters:
            print(f"==> starting {name}", flush=True)
            try:
                contender = start(stack, folder)
                contenders.append((contender, verify(contender, expected)))
            except Exception as error:  # PeerError, LaunchError...: report it, go on without it
                failures[name] = f"{type(error).__name__}: {error}"
                print(f"    FAILED: {failures[name]}", flush=True)
        for round_number in range(1, config.rounds + 1):
            print(f"-- round {round_number} of {config.rounds}", flush=True)
            for count, batch in batches.items():
                point = ort_reference(session, batch, config.seconds, config.max_requests)
                rounds.setdefault((ORT_ROW, count), []).append(point)
                for contender, sizes in contenders:
                    if contender.name in failures:
                        continue
                    try:
                        point = measure(contender, count, sizes[count], config, generator, folder)
                    except Exception as error:  # H2loadError...: this contender is out of the table
                        failures[contender.name] = f"{type(error).__name__}: {error}"
                        print(f"    {contender.name} FAILED: {failures[contender.name]}", flush=True)
                        continue
                    rounds.setdefault((contender.name, count), []).append(point)
                    print(
                        f"    {contender.name:40s} {count:2d} images/req: {point.rps:8,.0f} req/s "
                        f"CPU {point.cpu_us_per_request:7,.0f} µs/req p99 {point.p99_ms:6.2f} ms"
                        + (f"  ⚠ {point.problem}" if point.problem else ""),
                        flush=True,
                    )
    points = [median_point(measured) for (name, _), measured in rounds.items() if name not in failures]

    print()
    print(table(points, failures))
    print(
        "\nserver CPU: utime+stime of the server's process tree over the timed run (/proc); "
        "ORT row: this process's CPU. Ratios: >1x means more images/s, or more CPU per request. "
        f"Each row: the median of {config.rounds} rounds by req/s."
    )
    if config.json_path:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(
            json.dumps(
                {
                    "model": str(model_file),
                    "standin": standin,
                    "load_generator": generator,
                    "streams": config.streams,
                    "seconds": config.seconds,
                    "rounds": config.rounds,
                    "req_per_second_by_round": {
                        f"{name}, {count} images/req": [round(p.rps, 1) for p in measured]
                        for (name, count), measured in rounds.items()
                    },
                    "onnxruntime": metadata.version("onnxruntime"),
                    "points": [
                        asdict(p)
                        | {
                            "rps": p.rps,
                            "images_per_second": p.images_per_second,
                            "cpu_us_per_request": p.cpu_us_per_request,
                        }
                        for p in points
                    ],
                    "failures": failures,
                },
                indent=2,
            )
        )
    return 1 if failures or any(p.problem or p.errors for p in points) else 0
