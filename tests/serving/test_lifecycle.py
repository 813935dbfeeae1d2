"""No request lost: new versions published under load, and SIGTERM under load, over real processes.

Sixteen callers keep the server busy over gRPC while versions come and go or the process is told
to stop. Every call is checked: a version change must fail no call (and every answer must be the
one of the version its response names); a shutdown must answer every call it admitted, and refuse
later calls only with UNAVAILABLE. Batching off and on. No step waits on a log line: progress is read
from the server's own status API and from the callers' results.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import ServerProcess, reference_probabilities, start_server, write_tiny_version

pytestmark = pytest.mark.slow

CALLERS = 16
BATCHING = {"batching off": [], "batching on": ["--enable_batching"]}


def _request(images: np.ndarray) -> apis_pb2.PredictRequest:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["image"].CopyFrom(codec.from_numpy(images))
    return request


@dataclass
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode
    version: int = 0
    probabilities: np.ndarray | None = None


@dataclass
class Callers:
    """CALLERS threads calling Predict in a closed loop, each on its own channel, until stopped
    (or, for one caller, until it is told UNAVAILABLE)."""

    target: str
    images: np.ndarray
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Callers:
        for _ in range(CALLERS):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self) -> None:
        request = _request(self.images)
        with grpc.insecure_channel(self.target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = stub.Predict(request, timeout=30)
                except grpc.RpcError as error:
                    outcome = Outcome(started, time.monotonic(), error.code())
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        # Told to go elsewhere, a caller moves to another replica (as load-balancing
                        # clients do): it stops calling this server.
                        with self._lock:
                            self.outcomes.append(outcome)
                        return
                else:
                    outcome = Outcome(
                        started,
                        time.monotonic(),
                        grpc.StatusCode.OK,
                        response.model_spec.version.value,
                        codec.to_numpy(response.outputs["probabilities"]),
                    )
                with self._lock:
                    self.outcomes.append(outcome)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, calls: int, timeout: float = 60, running: float = 0.0) -> None:
        """Until `calls` calls have ended and (with `running`) the first began `running` s ago."""
        deadline = time.monotonic() + timeout
        while self.count() < calls or time.monotonic() - self._first_started() < running:
            assert time.monotonic() < deadline, f"only {self.count()} calls in {timeout}s"
            time.sleep(0.01)

    def _first_started(self) -> float:
        with self._lock:
            return min((o.started for o in self.outcomes), default=time.monotonic())


def _states(target: str) -> dict[int, int]:
    request = apis_pb2.GetModelStatusRequest()
    request.model_spec.name = "tiny"
    with grpc.insecure_channel(target) as channel:
        response = apis_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {status.version: status.state for status in response.model_version_status}


def _publish(base: Path, version: int, slow: bool) -> None:
    """Build the version beside the model and rename it into place, as `python -m export` does."""
    staging = base.parent / ".staging" / base.name
    shutil.rmtree(staging, ignore_errors=True)
    write_tiny_version(staging, version, seed=version, slow=slow)
    base.mkdir(parents=True, exist_ok=True)
    (staging / str(version)).rename(base / str(version))


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(2, 28, 28, 1)).astype(np.float32)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.parametrize("batching", sorted(BATCHING))
def test_new_versions_under_load_lose_no_request(
    batching: str, tmp_path: Path, images: np.ndarray, server_factory: list[ServerProcess]
) -> None:
    base = tmp_path / "models" / "tiny"
    _publish(base, 1, slow=True)
    server = start_server(
        ["--model_name", "tiny", "--model_base_path", str(base), "--file_system_poll_wait_seconds", "0.1"]
        + BATCHING[batching],
        tmp_path / "server.log",
    )
    server_factory.append(server)
    swaps = 4
    with Callers(server.grpc_target, images) as callers:
        callers.wait_for(50)
        for version in range(2, 2 + swaps):
            _publish(base, version, slow=True)
            deadline = time.monotonic() + 60
            # Wait until the previous version is fully unloaded (END) while traffic keeps flowing.
            while _states(server.grpc_target).get(version - 1) != apis_pb2.ModelVersionStatus.END:
                assert time.monotonic() < deadline, _states(server.grpc_target)
                time.sleep(0.05)
            before = callers.count()
            callers.wait_for(before + 20)  # the new version serves too
    outcomes = callers.outcomes
    failures = collections.Counter(o.code.name for o in outcomes if o.code != grpc.StatusCode.OK)
    assert not failures, f"{failures} of {len(outcomes)} calls failed\n{server.log()[-3000:]}"
    served = collections.Counter(o.version for o in outcomes)
    assert set(served) == set(range(1, 2 + swaps)), served
    expected = {v: reference_probabilities(base / str(v), images) for v in served}
    for outcome in outcomes:  # each answer is the one of the version it names: no mix-up
        np.testing.assert_allclose(outcome.probabilities, expected[outcome.version], atol=1e-5)
    assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("lame_duck", [0.0, 1.0])
@pytest.mark.parametrize("batching", sorted(BATCHING))
def test_sigterm_under_load_answers_every_admitted_request(
    batching: str,
    lame_duck: float,
    tmp_path: Path,
    images: np.ndarray,
    server_factory: list[ServerProcess],
) -> None:
    base = tmp_path / "models" / "tiny"
    write_tiny_version(base, 1, slow=True)  # ~10 ms a call: 16 callers keep calls in flight
    server = start_server(
        ["--model_name", "tiny", "--model_base_path", str(base), "--lame_duck_seconds", str(lame_duck)]
        + BATCHING[batching],
        tmp_path / "server.log",
    )
    server_factory.append(server)
    with Callers(server.grpc_target, images) as callers:
        # Calls that began well before the signal must exist for the check below to mean anything.
        callers.wait_for(100, running=1.0)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.log()
        stopped = time.monotonic()
    outcomes = callers.outcomes
    codes = collections.Counter(o.code.name for o in outcomes)
    # Refused calls are UNAVAILABLE (retryable elsewhere); nothing else may fail: no CANCELLED.
    assert set(codes) <= {"OK", "UNAVAILABLE"}, f"{codes}\n{server.log()[-3000:]}"
    # Calls begun well before the signal (or inside the lame-duck window) were admitted: all answered.
    admitted = [o for o in outcomes if o.started < signalled + lame_duck / 2 - 0.3]
    assert admitted and all(o.code == grpc.StatusCode.OK for o in admitted), collections.Counter(
        o.code.name for o in admitted
    )
    # Calls in flight at the signal were answered, not cut: some ended after it, successfully.
    assert any(o.code == grpc.StatusCode.OK and o.ended > signalled for o in outcomes)
    expected = reference_probabilities(base / "1", images)
    for outcome in outcomes:
        if outcome.probabilities is not None:
            np.testing.assert_allclose(outcome.probabilities, expected, atol=1e-5)
    assert stopped - signalled >= lame_duck
    log = server.log()
    assert "draining" in log and "still in flight" not in log and "Traceback" not in log, log


def test_sigterm_under_rest_load_answers_every_admitted_request(
    tmp_path: Path, images: np.ndarray, server_factory: list[ServerProcess]
) -> None:
    import json

    import requests

    base = tmp_path / "models" / "tiny"
    write_tiny_version(base, 1, slow=True)
    server = start_server(["--model_name", "tiny", "--model_base_path", str(base)], tmp_path / "server.log")
    server_factory.append(server)
    url = f"{server.rest_url}/v1/models/tiny:predict"
    body = json.dumps({"instances": images.tolist()})
    outcomes: list[tuple[float, str]] = []
    lock = threading.Lock()
    signalled = [float("inf")]

    def call() -> None:
        with requests.Session() as session:
            while True:
                started = time.monotonic()
                try:
                    status = str(session.post(url, data=body, timeout=30).status_code)
                except requests.ConnectionError:  # the port closed: as good as a refusal
                    status = "closed"
                with lock:
                    outcomes.append((started, status))
                if status != "200":
                    return

    threads = [threading.Thread(target=call, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(outcomes) < 50:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    signalled[0] = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0, server.log()
    for thread in threads:
        thread.join(30)
    statuses = collections.Counter(status for _, status in outcomes)
    assert set(statuses) <= {"200", "503", "closed"}, statuses
    assert all(status == "200" for started, status in outcomes if started < signalled[0] - 0.3), statuses
    assert not any(status == "closed" for started, status in outcomes if started < signalled[0])


@pytest.mark.parametrize(("preferred", "most_rows"), [(0, 16), (4, 4)])
def test_preferred_batch_size_caps_the_batches_requests_merge_into(
    preferred: int, most_rows: int, tmp_path: Path, images: np.ndarray, server_factory: list[ServerProcess]
) -> None:
    """16 callers of 2 rows on a ~10 ms engine: batches merge several requests, up to max_batch_size
    (16 here), or with --preferred_batch_size 4 up to 4 rows; every answer is still its own."""
    import urllib.request

    base = tmp_path / "models" / "tiny"
    write_tiny_version(base, 1, slow=True)
    batching = tmp_path / "batching.txt"
    batching.write_text("max_batch_size { value: 16 } batch_timeout_micros { value: 0 } num_batch_threads { value: 1 }")
    flags = ["--model_name", "tiny", "--model_base_path", str(base), "--enable_batching"]
    flags += ["--batching_parameters_file", str(batching), "--preferred_batch_size", str(preferred)]
    server = start_server(flags, tmp_path / "server.log")
    server_factory.append(server)
    with Callers(server.grpc_target, images) as callers:
        callers.wait_for(100)
    assert {o.code for o in callers.outcomes} == {grpc.StatusCode.OK}
    expected = reference_probabilities(base / "1", images)
    for outcome in callers.outcomes:
        assert outcome.probabilities is not None
        np.testing.assert_allclose(outcome.probabilities, expected, atol=1e-5)
    with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10) as response:
        metrics = response.read().decode()

    def series(name: str) -> dict[str, float]:
        return {
            line.split("}")[0]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith(f"model_server_batch_size_{name}{{") and 'model_name="tiny"' in line
        }

    calls = sum(series("count").values())
    rows = sum(series("sum").values())
    by_size = {re.search(r'le="([^"]+)"', key)[1]: count for key, count in series("bucket").items()}  # type: ignore[index]
    assert rows > 2 * calls, f"{calls} engine calls for {rows} rows: requests did not merge"
    assert by_size[f"{float(most_rows)}"] == calls, by_size  # no batch over the cap
    assert by_size[f"{float(most_rows // 2)}"] < calls, by_size  # and batches did reach it
