"""docker/healthcheck.py against a real gRPC server with the standard health service, over loopback."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load_script()


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_serving_is_healthy(health_server: tuple[health.HealthServicer, int]) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--port", str(port)]) == 0


@pytest.mark.parametrize(
    "status", [health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.UNKNOWN]
)
def test_not_serving_is_unhealthy(health_server: tuple[health.HealthServicer, int], status: int) -> None:
    servicer, port = health_server
    servicer.set("", status)
    assert healthcheck.main(["--port", str(port)]) == 1


def test_unknown_service_is_unhealthy(health_server: tuple[health.HealthServicer, int]) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--port", str(port), "--service", "no.such.Service"]) == 1
    servicer.set("no.such.Service", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--port", str(port), "--service", "no.such.Service"]) == 0


def test_nothing_listening_is_unhealthy() -> None:
    assert healthcheck.main(["--port", str(free_port()), "--timeout", "1"]) == 1


def test_exit_status_as_a_process(health_server: tuple[health.HealthServicer, int]) -> None:
    """What Docker's HEALTHCHECK sees: the script's exit status."""
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    command = [sys.executable, str(SCRIPT), "--port", str(port)]
    assert subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "NOT_SERVING" in result.stderr
