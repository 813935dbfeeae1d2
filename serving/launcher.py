"""Start `python -m serving` as a child process on free loopback ports and wait until it serves.

One launcher for everything that needs a real server beside it: the test suite, `make bench` and
`make loadtest`. The server logs the ports it bound (`gRPC listening on HOST:PORT`), which is how
port 0 (a free port) is read back; readiness is grpc.health.v1 answering SERVING.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]


class LaunchError(RuntimeError):
    """The server exited, did not listen, or never became SERVING; the message says which."""


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    log_path: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (graceful drain), then SIGKILL after `timeout`; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def write_model_config(path: Path, models: Mapping[str, Path], extra: str = "") -> Path:
    """A TF Serving `model_config_list` file; `extra` is inserted in every `config { }`."""
    entries = "".join(
        f"  config {{\n    name: '{name}'\n    base_path: '{base}'\n    model_platform: 'tensorflow'\n{extra}  }}\n"
        for name, base in models.items()
    )
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


def launch(
    args: Sequence[str], log_path: Path, timeout: float = 60, wait_serving: bool = True
) -> ServerProcess:
    """Run `python -m serving ARGS` on 127.0.0.1 with free ports; wait for health SERVING."""
    command = [
        sys.executable,
        "-m",
        "serving",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--rest_api_port",
        "0",
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        grpc_match = re.search(r"gRPC listening on [^\s]+:(\d+)", text)
        rest_match = re.search(r"REST listening on [^\s]+:(\d+)", text)
        if grpc_match and rest_match:
            server = ServerProcess(process, int(grpc_match[1]), int(rest_match[1]), log_path)
            break
        if process.poll() is not None:
            raise LaunchError(f"the server exited with status {process.returncode}:\n{text}")
        time.sleep(0.05)
    else:
        process.kill()
        process.wait()
        raise LaunchError(
            f"the server did not listen within {timeout:.0f} s:\n{log_path.read_text(errors='replace')}"
        )
    if wait_serving:
        try:
            wait_for_health(server.grpc_target, deadline)
        except LaunchError:
            server.stop()
            raise
    return server


def wait_for_health(
    target: str,
    deadline: float,
    want: int = health_pb2.HealthCheckResponse.SERVING,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> None:
    """Poll grpc.health.v1 (service "") until it reports `want`, or raise LaunchError at `deadline`.
    `metadata`: e.g. the bearer token of a server whose health checks are not exempt."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2, metadata=metadata).status == want:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise LaunchError(
        f"health of {target} never became {health_pb2.HealthCheckResponse.ServingStatus.Name(want)}"
    )
