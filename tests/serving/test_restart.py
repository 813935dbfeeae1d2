"""SIGKILL under load, then a new process on the same ports: ready again, and answering correctly.

What a crashed pod (OOM kill, node failure) or `kill -9` leaves behind: no drain, no unload, the
ports dropped by the kernel with connections still open on them. A new server started on the same
ports must bind them at once (no "address in use" from the dead process's sockets), turn SERVING
on grpc.health.v1 (the readiness the launcher waits for: ports read from the log, then health polled,
never a log line raced), and answer the callers that kept calling through the outage, with the
right answers. The time from the new process's start to SERVING is printed and bounded.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc
from tests.serving.fixtures import ServerProcess, reference_probabilities, start_server, write_tiny_version

pytestmark = pytest.mark.slow

CALLERS = 4
READY_BOUND_SECONDS = 30.0  # generous: a tiny model is SERVING in a couple of seconds
# Callers reconnect quickly once the port is back (gRPC's default backoff starts at 1 s and grows).
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
ERROR_PAUSE_SECONDS = 0.02  # a caller told UNAVAILABLE calls again after this (no busy loop)


@dataclass
class Outcome:
    started: float
    code: grpc.StatusCode
    probabilities: np.ndarray | None = None


@dataclass
class Callers:
    """CALLERS threads calling Predict in a closed loop on their own channels, through errors."""

    target: str
    images: np.ndarray
    outcomes: dict[int, list[Outcome]] = field(default_factory=lambda: collections.defaultdict(list))
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Callers:
        for index in range(CALLERS):
            thread = threading.Thread(target=self._loop, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self, index: int) -> None:
        request = apis_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.inputs["image"].CopyFrom(codec.from_numpy(self.images))
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = stub.Predict(request, timeout=10)
                except grpc.RpcError as error:
                    outcome = Outcome(started, error.code())
                else:
                    probabilities = codec.to_numpy(response.outputs["probabilities"])
                    outcome = Outcome(started, grpc.StatusCode.OK, probabilities)
                with self._lock:
                    self.outcomes[index].append(outcome)
                if outcome.code != grpc.StatusCode.OK:
                    self._stop.wait(ERROR_PAUSE_SECONDS)

    def all(self) -> list[Outcome]:
        with self._lock:
            return [outcome for outcomes in self.outcomes.values() for outcome in outcomes]

    def wait_until(
        self, done: str, check: Callable[[dict[int, list[Outcome]]], bool], timeout: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if check({index: list(outcomes) for index, outcomes in self.outcomes.items()}):
                    return
            assert time.monotonic() < deadline, f"callers: not {done} within {timeout}s"
            time.sleep(0.01)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def test_sigkill_under_load_then_a_new_process_on_the_same_ports_serves(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    base = tmp_path / "models" / "tiny"
    version_dir = write_tiny_version(base, 1)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28, 1)).astype(np.float32)
    expected = reference_probabilities(version_dir, images)
    args = ["--model_name", "tiny", "--model_base_path", str(base)]
    launched = time.monotonic()
    first = start_server(args, tmp_path / "first.log")
    first_ready = time.monotonic() - launched
    servers.append(first)
    ports = ["--port", str(first.grpc_port), "--rest_api_port", str(first.rest_port)]

    with Callers(first.grpc_target, images) as callers:
        callers.wait_until(
            "each caller answered 20 times",
            lambda by_caller: len(by_caller) == CALLERS
            and all(sum(o.code == grpc.StatusCode.OK for o in calls) >= 20 for calls in by_caller.values()),
        )
        killed = time.monotonic()
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(10) == -signal.SIGKILL

        launched = time.monotonic()
        second = start_server([*args, *ports], tmp_path / "second.log", timeout=READY_BOUND_SECONDS + 30)
        ready = time.monotonic()
        servers.append(second)
        assert (second.grpc_port, second.rest_port) == (first.grpc_port, first.rest_port)
        print(
            f"\nfirst start to SERVING {first_ready:.2f}s; after SIGKILL, new process start to SERVING "
            f"{ready - launched:.2f}s (SIGKILL to SERVING {ready - killed:.2f}s)"
        )
        assert ready - launched < READY_BOUND_SECONDS

        # Every caller's own channel reconnects and gets answers from the new process.
        callers.wait_until(
            "answered by the new process",
            lambda by_caller: all(
                any(o.code == grpc.StatusCode.OK and o.started > ready for o in outcomes)
                for outcomes in by_caller.values()
            ),
        )
    outcomes = callers.all()
    codes = collections.Counter(o.code.name for o in outcomes)
    # While no process listened, calls were refused as UNAVAILABLE (retryable), nothing else.
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    for outcome in outcomes:
        if outcome.probabilities is not None:
            np.testing.assert_allclose(outcome.probabilities, expected, atol=1e-5)
    assert all(o.code == grpc.StatusCode.OK for o in outcomes if o.started < killed - 0.5), codes

    # A fresh client on both APIs, on the same ports as before the kill.
    with grpc.insecure_channel(second.grpc_target) as channel:
        request = apis_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.inputs["image"].CopyFrom(codec.from_numpy(images))
        response = apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(codec.to_numpy(response.outputs["probabilities"]), expected, atol=1e-5)
    body = requests.post(
        f"{second.rest_url}/v1/models/tiny:predict", json={"instances": images.tolist()}, timeout=10
    ).json()
    np.testing.assert_allclose(np.array(body["predictions"]), expected, atol=1e-5)
    assert second.stop() == 0
    assert "Traceback" not in second.log(), second.log()
