"""The campaign: start the real server on 127.0.0.1, send every case, judge every answer, watch the process.

One `python -m serving` child process (`serving.launcher.launch`, free ports) serves the tiny model
repository of `loadtests.fuzz.models` with batching on, the Prometheus page, and an 8 MiB message
limit (so "over the limit" costs 9 MB, not 65). gRPC and REST cases are interleaved and sent by
`concurrency` worker threads; each case has its own timeout. After every case the process is checked:
if it died, the case is a failure and the server is started again (a few times at most). The
server's RSS (VmRSS from /proc) is read after a warm-up and at the end; VmHWM gives the peak.

Traffic goes to 127.0.0.1 only: the server is bound there and every address is built from its ports.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from loadtests.fuzz import grpc_cases, rest_cases
from loadtests.fuzz.cases import (
    CONNECTION,
    GRPC,
    HANGUP,
    REST,
    TIMEOUT,
    Case,
    GrpcCase,
    Outcome,
    RestCase,
    case_id,
    error_message,
    judge,
)
from loadtests.fuzz.models import write_repository
from serving.launcher import ServerProcess, launch

if TYPE_CHECKING:
    from loadtests.fuzz.openapi_cases import Conformance, OpenApiCases

LOOPBACK = "127.0.0.1"
MESSAGE_LIMIT = rest_cases.BODY_LIMIT
MAX_RESTARTS = 3
MAX_ANSWER_BYTES = 64 << 20
WARM_UP_INDICES = 200
MAX_BATCH = 64  # the batcher refuses larger requests (as TF Serving does); valid cases stay under it  # the valid cases among the first indices of each transport are sent first


@dataclass(frozen=True)
class CampaignConfig:
    seed: int
    grpc_cases: int
    rest_cases: int
    max_seconds: float
    case_timeout: float = 10.0
    concurrency: int = 2
    max_rss_growth_mb: float = 256.0
    openapi: bool = True
    batching: bool = True
    server_args: tuple[str, ...] = ()
    work_dir: Path | None = None


@dataclass
class CaseResult:
    case: Case
    outcome: Outcome
    failure: str | None
    log: str = ""  # what the server logged while the case ran (exact with concurrency 1)
    cause: str = ""  # for a failure: the last exception the server logged meanwhile, if any

    @property
    def id(self) -> str:
        return case_id(self.case)


@dataclass
class Campaign:
    config: CampaignConfig
    results: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0  # sending cases
    startup_seconds: float = 0.0  # building the models, starting the server, the warm-up
    stop_seconds: float = 0.0
    stopped_by: str = "count"
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    rss_peak_kb: int = 0
    restarts: int = 0
    exit_status: int | None = None
    server_log: str = ""
    openapi_note: str = ""
    conformance: list[tuple[str, str]] = field(default_factory=list)  # (case id, why)
    harness_errors: list[tuple[str, str]] = field(
        default_factory=list
    )  # (case id, the fuzzer's own exception)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.failure]

    @property
    def rss_growth_mb(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / 1024

    @property
    def rss_failure(self) -> str | None:
        if self.rss_before_kb and self.rss_growth_mb > self.config.max_rss_growth_mb:
            return (
                f"server RSS grew {self.rss_growth_mb:.1f} MB (from {self.rss_before_kb / 1024:.1f} to "
                f"{self.rss_after_kb / 1024:.1f} MB), over the bound of {self.config.max_rss_growth_mb:.0f} MB"
            )
        return None

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and self.rss_failure is None
            and not self.conformance
            and not self.harness_errors
        )


# -- the server -------------------------------------------------------------------------------------


def _proc_status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match[1]) if match else 0


class FuzzServer:
    """The server under test: the tiny repository, its config files, and the running process."""

    def __init__(self, work_dir: Path, batching: bool, extra_args: Sequence[str] = ()) -> None:
        self.work_dir = work_dir
        config = write_repository(work_dir / "models")
        (work_dir / "batching.config").write_text(
            f"max_batch_size {{ value: {MAX_BATCH} }} batch_timeout_micros {{ value: 2000 }} "
            "max_enqueued_batches { value: 1000 } num_batch_threads { value: 2 }\n"
        )
        (work_dir / "monitoring.config").write_text(
            f'prometheus_config {{ enable: true path: "{rest_cases.METRICS_PATH}" }}\n'
        )
        self.args = [
            "--model_config_file",
            str(config),
            "--monitoring_config_file",
            str(work_dir / "monitoring.config"),
        ]
        self.args += ["--grpc_max_message_bytes", str(MESSAGE_LIMIT), "--drain_seconds", "2"]
        if batching:
            self.args += [
                "--enable_batching",
                "--batching_parameters_file",
                str(work_dir / "batching.config"),
            ]
        self.args += list(extra_args)
        self.logs: list[Path] = []
        self.process: ServerProcess | None = None
        self.generation = 0

    def start(self) -> ServerProcess:
        log_path = self.work_dir / f"server-{len(self.logs)}.log"
        self.logs.append(log_path)
        self.process = launch(self.args, log_path, timeout=120)
        self.generation += 1
        return self.process

    @property
    def current(self) -> ServerProcess:
        assert self.process is not None
        return self.process

    def alive(self) -> bool:
        return self.process is not None and self.process.process.poll() is None

    def rss_kb(self) -> int:
        return _proc_status_kb(self.current.process.pid, "VmRSS")

    def peak_kb(self) -> int:
        return _proc_status_kb(self.current.process.pid, "VmHWM")

    def log_size(self) -> int:
        try:
            return self.logs[-1].stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with self.logs[-1].open("rb") as handle:
                handle.seek(offset)
                return handle.read(200_000).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        return self.current.stop() if self.process is not None else None

    def all_logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())


# -- sending ----------------------------------------------------------------------------------------


class GrpcSender:
    """One channel to the server; each case goes through a raw method (bytes in, bytes out)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )

    def send(self, case: GrpcCase, timeout: float) -> Outcome:
        call = self.channel.unary_unary(case.method, request_serializer=None, response_deserializer=None)
        started = time.perf_counter()
        try:
            answer = call(case.payload, timeout=case.deadline or timeout)
        except grpc.RpcError as error:
            seconds = time.perf_counter() - started
            code = error.code()
            details = error.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(TIMEOUT, details, seconds)
            return Outcome(code.name, details, seconds)
        seconds = time.perf_counter() - started
        response_type = grpc_cases.RESPONSE_TYPES.get(case.method)
        body_ok = True
        if response_type is not None:
            try:
                response_type.FromString(answer)
            except Exception:
                body_ok = False
        return Outcome("OK", "", seconds, body_ok)

    def close(self) -> None:
        self.channel.close()


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def parse_http_answer(data: bytes, head_request: bool = False, closed: bool = False) -> HttpAnswer | None:
    """The final answer in `data` (1xx interim answers skipped), or None while it is incomplete;
    `closed`: the connection has ended, so a body without a length is complete."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if closed:
                raise ValueError(f"the connection ended inside the answer's head: {data[:80]!r}")
            return None
        head, rest = data[:end].decode("latin-1"), data[end + 4 :]
        match = re.match(r"HTTP/\d(?:\.\d)? (\d{3}) ?([^\r\n]*)", head)
        if match is None:
            raise ValueError(f"not an HTTP answer: {head[:80]!r}")
        status = int(match[1])
        headers: dict[str, str] = {}
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            data = rest
            continue
        if head_request or status in (204, 304):
            return HttpAnswer(status, match[2], headers, b"")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(rest)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body = rest[:length] if len(rest) >= length else None
        else:
            body = rest if closed else None  # the body runs to the end of the connection
        if body is None:
            if closed:
                raise ValueError("the connection ended inside the answer's body")
            return None
        return HttpAnswer(status, match[2], headers, body)


def _dechunk(data: bytes) -> bytes | None:
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return None
        size = int(data[:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        chunk = data[line_end + 2 : line_end + 2 + size]
        if len(chunk) < size:
            return None
        body += chunk
        data = data[line_end + 2 + size + 2 :]


def send_rest(case: RestCase, port: int, timeout: float) -> tuple[Outcome, HttpAnswer | None]:
    """Write the case's bytes to a fresh connection; read the answer (Connection: close)."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    received = bytearray()
    if case.hangup_after >= 0:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((LOOPBACK, port), timeout=timeout) as sock,
        ):
            sock.sendall(rest_cases.request_bytes(case, f"{LOOPBACK}:{port}")[: case.hangup_after])
        return Outcome(HANGUP, "", time.perf_counter() - started), None
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            # The server may answer (413, 400) and close before it has read everything.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(rest_cases.request_bytes(case, f"{LOOPBACK}:{port}"))
            answer = None
            while answer is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(1 << 20)
                except ConnectionResetError:
                    chunk = b""
                if not chunk and not received:
                    seconds = time.perf_counter() - started
                    return Outcome(CONNECTION, "connection closed without an answer", seconds), None
                received += chunk
                if len(received) > MAX_ANSWER_BYTES:
                    raise ValueError("answer over 64 MiB")
                answer = parse_http_answer(bytes(received), case.method == "HEAD", closed=not chunk)
    except TimeoutError:
        return Outcome(
            TIMEOUT, f"{len(received)} bytes of answer after {timeout:.0f} s", time.perf_counter() - started
        ), None
    except (ConnectionError, OSError, ValueError) as exc:
        return Outcome(CONNECTION, f"{type(exc).__name__}: {exc}", time.perf_counter() - started), None
    seconds = time.perf_counter() - started
    return _rest_outcome(case, answer, seconds), answer


def _rest_outcome(case: RestCase, answer: HttpAnswer, seconds: float) -> Outcome:
    status = f"HTTP {answer.status}"
    if case.method == "HEAD":
        return Outcome(status, f"{answer.status} {answer.reason}".strip(), seconds)
    if 200 <= answer.status < 300:
        if case.target.startswith(rest_cases.METRICS_PATH):
            return Outcome(status, "", seconds, bool(answer.body))
        try:
            body_ok = isinstance(json.loads(answer.body), dict)
        except ValueError:
            body_ok = False
        return Outcome(status, "", seconds, body_ok)
    message, is_api_error = error_message(answer.body)
    return Outcome(status, message, seconds, is_api_error)


def last_exception(log: str) -> str | None:
    """The exception line ("TypeError: ...") that ends the last traceback in a piece of server log,
    leaving out the HTTP parser's (aiohttp logs every malformed request it answers 400)."""
    lines = log.splitlines()
    found = None
    for index, line in enumerate(lines):
        parser_noise = index > 0 and "aiohttp.server: Error handling request" in lines[index - 1]
        if line.startswith("Traceback (most recent call last):") and not parser_noise:
            end = index + 1
            while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
                end += 1
            if end < len(lines):
                found = lines[end]
    return found[:200] if found else None


# -- the loop ---------------------------------------------------------------------------------------


def interleaved(grpc_count: int, rest_count: int) -> Iterator[tuple[str, int]]:
    """grpc:0, rest:0, grpc:1, rest:1, ... then the rest of the longer list."""
    for index in range(max(grpc_count, rest_count)):
        if index < grpc_count:
            yield GRPC, index
        if index < rest_count:
            yield REST, index


def parse_case_id(text: str) -> tuple[str, int]:
    transport, _, number = text.partition(":")
    if transport not in (GRPC, REST) or not number.isdigit():
        raise ValueError(f"a case is named grpc:N or rest:N, not {text!r}")
    return transport, int(number)


class Runner:
    """Builds, sends and judges cases against a FuzzServer, restarting it if it dies."""

    def __init__(self, config: CampaignConfig, server: FuzzServer, campaign: Campaign) -> None:
        self.config = config
        self.server = server
        self.campaign = campaign
        self.openapi: OpenApiCases | None = None
        self.conformance: Conformance | None = None
        if config.openapi:
            try:
                from loadtests.fuzz.openapi_cases import Conformance, OpenApiCases

                self.openapi = OpenApiCases()
                self.conformance = Conformance(self.openapi.document)
            except ImportError as exc:
                campaign.openapi_note = f"OpenAPI cases off: {exc} (pip install -e '.[dev]')"
        self._lock = threading.Lock()
        self._grpc = GrpcSender(server.current.grpc_target)

    def build(self, transport: str, index: int) -> Case:
        if transport == GRPC:
            return grpc_cases.grpc_case(self.config.seed, index)
        return rest_cases.rest_case(self.config.seed, index, self.openapi)

    def run_case(self, case: Case, capture_log: bool) -> CaseResult:
        generation = self.server.generation
        offset = self.server.log_size()
        process = self.server.current
        if isinstance(case, GrpcCase):
            with self._lock:
                sender = self._grpc
            outcome = sender.send(case, self.config.case_timeout)
        else:
            outcome, answer = send_rest(case, process.rest_port, self.config.case_timeout)
            if answer is not None and self.conformance is not None:
                why = self.conformance.check(
                    case.method, case.target, answer.status, answer.body, statuses=case.family == "openapi"
                )
                if why:
                    with self._lock:
                        self.campaign.conformance.append((case_id(case), why))
        failure = judge(case, outcome)
        if not self.server.alive():
            failure = self._died(case, generation)
        elif generation != self.server.generation and failure:
            failure = "in flight while the server died and restarted"
        server_error = failure is not None and (
            outcome.status in ("INTERNAL", "UNKNOWN", CONNECTION) or outcome.status.startswith("HTTP 5")
        )
        log = self.server.log_since(offset) if capture_log or server_error else ""
        cause = (last_exception(log) if server_error else "") or ""
        return CaseResult(case, outcome, failure, log if capture_log else "", cause)

    def _died(self, case: Case, generation: int) -> str:
        with self._lock:
            if generation != self.server.generation:
                return "in flight while the server died and restarted"
            status = self.server.current.process.poll()
            why = f"the server process died (exit status {status}) during this case"
            self.campaign.exit_status = status
            if self.campaign.restarts < MAX_RESTARTS:
                self.campaign.restarts += 1
                self.server.start()
                self._grpc.close()
                self._grpc = GrpcSender(self.server.current.grpc_target)
            return why

    def close(self) -> None:
        self._grpc.close()


def warm_up(runner: Runner) -> None:
    """The campaign's first valid cases, sent before RSS 'before' is read: it then includes what any
    first call allocates (sessions' arenas, the batcher's threads, Pillow's and orjson's buffers)."""
    for index in range(WARM_UP_INDICES):
        # Without the OpenAPI family: drawing its blocks takes seconds, and it has no valid.* cases.
        for case in (
            grpc_cases.grpc_case(runner.config.seed, index),
            rest_cases.rest_case(runner.config.seed, index),
        ):
            if case.family.startswith("valid."):
                runner.run_case(case, capture_log=False)


def run_campaign(config: CampaignConfig, progress: Callable[[str], None] | None = None) -> Campaign:
    """Start the server, run the cases (bounded by counts and max_seconds), stop it; returns what happened."""
    campaign = Campaign(config)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        began = time.monotonic()
        work_dir = config.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        server = FuzzServer(work_dir, config.batching, config.server_args)
        server.start()
        runner = Runner(config, server, campaign)
        try:
            warm_up(runner)
            campaign.rss_before_kb = server.rss_kb()
            started = time.monotonic()
            campaign.startup_seconds = started - began
            jobs = interleaved(config.grpc_cases, config.rest_cases)
            jobs_lock = threading.Lock()
            stop = threading.Event()

            def work() -> None:
                while not stop.is_set():
                    if time.monotonic() - started > config.max_seconds:
                        campaign.stopped_by = "max-seconds"
                        return
                    with jobs_lock:
                        job = next(jobs, None)
                    if job is None:
                        return
                    try:
                        result = runner.run_case(runner.build(*job), capture_log=config.concurrency == 1)
                    except Exception as exc:  # the fuzzer's own bug: say so, and go on with the next case
                        with jobs_lock:
                            campaign.harness_errors.append(
                                (f"{job[0]}:{job[1]}", f"{type(exc).__name__}: {exc}")
                            )
                        continue
                    with jobs_lock:
                        campaign.results.append(result)
                        done = len(campaign.results)
                    if progress is not None and done % 500 == 0:
                        progress(
                            f"{done} cases, {len(campaign.failures)} failures, {time.monotonic() - started:.0f} s"
                        )
                    if campaign.restarts >= MAX_RESTARTS and not server.alive():
                        stop.set()

            threads = [
                threading.Thread(target=work, name=f"fuzz-{n}") for n in range(max(1, config.concurrency))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            campaign.seconds = time.monotonic() - started
            if server.alive():
                campaign.rss_after_kb = server.rss_kb()
                campaign.rss_peak_kb = server.peak_kb()
        finally:
            runner.close()
            stopping = time.monotonic()
            status = server.stop()
            campaign.stop_seconds = time.monotonic() - stopping
            campaign.exit_status = campaign.exit_status if campaign.exit_status is not None else status
            campaign.server_log = server.all_logs()
    campaign.results.sort(key=lambda r: (r.case.index, isinstance(r.case, RestCase)))
    return campaign


def replay(config: CampaignConfig, ids: Sequence[str]) -> Campaign:
    """Run only the named cases (`grpc:N`, `rest:N`), one at a time, with the server log of each."""
    campaign = Campaign(config)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        server = FuzzServer(Path(scratch), config.batching, config.server_args)
        server.start()
        runner = Runner(config, server, campaign)
        try:
            campaign.rss_before_kb = server.rss_kb()
            started = time.monotonic()
            for text in ids:
                case = runner.build(*parse_case_id(text))
                campaign.results.append(runner.run_case(case, capture_log=True))
            campaign.seconds = time.monotonic() - started
            campaign.rss_after_kb = server.rss_kb() if server.alive() else 0
            campaign.rss_peak_kb = server.peak_kb() if server.alive() else 0
        finally:
            runner.close()
            campaign.exit_status = server.stop()
            campaign.server_log = server.all_logs()
    return campaign
