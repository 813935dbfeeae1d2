"""--workers: several processes share both ports; answers, merged metrics, and a clean stop."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clients import GrpcClient
from tests.serving.fixtures import reference_probabilities, start_server, write_tiny_version

pytestmark = pytest.mark.slow


def test_two_workers_share_the_ports_and_merge_metrics(tmp_path: Path) -> None:
    base = tmp_path / "models" / "tiny"
    write_tiny_version(base, 1)
    server = start_server(
        ["--model_name", "tiny", "--model_base_path", str(base), "--workers", "2"], tmp_path / "s.log"
    )
    try:
        # Readiness is shared: health said SERVING only once both workers had loaded the model (each
        # logs this line before it publishes its readiness), so both lines are there by now.
        log = server.log()
        for worker in ("worker-0", "worker-1"):
            assert any(worker in line and "all models available" in line for line in log.splitlines()), log
        images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28, 1)).astype(np.float32)
        expected = reference_probabilities(base / "1", images)

        def call(_: int) -> np.ndarray:
            with GrpcClient(server.grpc_target) as client:  # a new connection each time: spread by the kernel
                return client.predict("tiny", {"image": images})["probabilities"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(40)))
        for answer in answers:
            np.testing.assert_allclose(answer, expected, atol=1e-5)
        body = json.dumps({"instances": images.tolist()}).encode()
        for _ in range(10):
            request = urllib.request.Request(f"{server.rest_url}/v1/models/tiny:predict", data=body)
            with urllib.request.urlopen(request, timeout=10) as response:
                np.testing.assert_allclose(json.loads(response.read())["predictions"], expected, atol=1e-5)
        with urllib.request.urlopen(
            f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10
        ) as response:
            metrics = response.read().decode()
        counts = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith(":tensorflow:serving:request_count{") and 'status="OK"' in line
        ]
        assert sum(counts) == 50, metrics  # 40 gRPC + 10 REST, whichever worker answered each
    finally:
        assert server.stop() == 0, server.log()


def test_a_dead_worker_stops_the_others_and_the_parent_fails(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    base = tmp_path / "models" / "tiny"
    write_tiny_version(base, 1)
    server = start_server(
        ["--model_name", "tiny", "--model_base_path", str(base), "--workers", "2"], tmp_path / "s.log"
    )
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(server.process.pid), "-f", "spawn_main"], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2, children
        os.kill(int(children[0]), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.process.returncode not in (None, 0)
        assert "stopping the others" in server.log()
    finally:
        server.stop()
