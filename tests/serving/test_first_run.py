"""Mistakes people make in their first minutes with the server get one line they can act on:
a port in use, gRPC sent to the REST port, a base path with no version folder, an unknown model."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.fixtures import REPO_ROOT, ServerProcess, start_server, write_config, write_tiny_version

pytestmark = pytest.mark.slow
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("first-run")
    write_tiny_version(root / "digits", 1)
    (root / "empty").mkdir()
    write_tiny_version(root / "staging", 1)
    flat = root / "flat"
    shutil.copytree(root / "staging" / "1", flat)  # model files straight in the base path
    shutil.rmtree(root / "staging")
    config = write_config(root / "models.config", {"digits": root / "digits", "empty": root / "empty", "flat": flat})
    process = start_server(["--model_config_file", str(config)], root / "server.log", wait_serving=False)
    deadline = time.monotonic() + 30
    while "some models have no available version" not in process.log():  # the start-up summary
        assert time.monotonic() < deadline and process.process.poll() is None, process.log()
        time.sleep(0.05)
    yield process
    process.stop()


def _get(server: ServerProcess, path: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(server.rest_url + path, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_a_base_path_without_versions_is_named_at_start_and_in_status(server: ServerProcess) -> None:
    log = server.log()
    assert "model 'empty' has no available version: no version folder under " in log
    assert "(versions are folders named by positive integers, e.g. " in log
    assert "model 'flat' has no available version: " in log and "holds model files itself: put them in a version folder" in log
    status, body = _get(server, "/v1/models/empty")
    assert status == 404 and body["error"].startswith("Could not find any versions of model empty: no version folder")
    status, body = _get(server, "/v1/models/digits")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


def test_an_unknown_model_lists_the_served_ones(server: ServerProcess) -> None:
    status, body = _get(server, "/v1/models/nope")
    assert status == 404
    assert body["error"] == "Servable not found for request: model 'nope' is not served (served: digits, empty, flat)"


def test_grpc_sent_to_the_rest_port_is_one_warning_line(server: ServerProcess) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as connection:
            connection.sendall(HTTP2_PREFACE)
            assert connection.recv(64).startswith(b"HTTP/1.0 400")
    assert _get(server, "/v1/models/digits")[0] == 200  # answered after the three, so they are logged
    log = server.log()
    warning = f"HTTP/2 (a gRPC client?) arrived on the REST port and got 400: gRPC is served on port {server.grpc_port}"
    assert log.count(warning) == 1, log  # three times sent, once logged: at most once a minute
    assert " WARNING aiohttp.server: HTTP/2 (a gRPC client?)" in log and "Traceback" not in log


@pytest.mark.parametrize("which", ["grpc", "rest"])
def test_a_port_in_use_is_one_line_and_exit_1(server: ServerProcess, tmp_path: Path, which: str) -> None:
    write_tiny_version(tmp_path / "digits", 1)
    ports = ["--port", str(server.grpc_port), "--rest_api_port", "0"]
    if which == "rest":
        ports = ["--port", "0", "--rest_api_port", str(server.rest_port)]
    done = _serve("--model_name", "digits", "--model_base_path", str(tmp_path / "digits"), "--host", "127.0.0.1", *ports)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "RuntimeError" not in done.stderr
    flag = "--port" if which == "grpc" else "--rest_api_port"
    port = server.grpc_port if which == "grpc" else server.rest_port
    assert f"cannot start: {'gRPC' if which == 'grpc' else 'REST'} port 127.0.0.1:{port} cannot be bound" in done.stderr
    assert done.stderr.rstrip().endswith(f"pick another with {flag}")
