"""GrpcClient and `ml-client --tls --ca` against the server's TLS port (TF Serving's --ssl_config_file)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.protobuf import text_format

from clients.__main__ import main
from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from serving.proto import config_pb2
from tests.serving.fixtures import start_server, write_tiny_version
from tests.serving.test_tls import make_certificates

pytestmark = pytest.mark.slow


def test_tls_with_a_private_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, key, cert = make_certificates(tmp_path)
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(
        text_format.MessageToString(
            config_pb2.SSLConfig(server_key=key.read_text(), server_cert=cert.read_text())
        )
    )
    write_tiny_version(tmp_path / "models" / "digits", 1)
    server = start_server(
        [
            "--model_name",
            "digits",
            "--model_base_path",
            str(tmp_path / "models" / "digits"),
            "--ssl_config_file",
            str(ssl_config),
        ],
        tmp_path / "server.log",
        wait_serving=False,  # the fixture's health check speaks plaintext
    )
    target = f"localhost:{server.grpc_port}"
    try:
        with GrpcClient(target, tls=True, root_certificates=ca, timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    statuses = client.status("digits")
                    if statuses and statuses[0].state == "AVAILABLE":
                        break
                except ClientError as exc:
                    if exc.code != "UNAVAILABLE" or time.monotonic() > deadline:
                        raise
                if time.monotonic() > deadline:
                    raise AssertionError(f"digits never became AVAILABLE: {statuses}")
                time.sleep(0.1)
        assert main(["--target", target, "--tls", "--ca", str(ca), "status", "--model", "digits"]) == 0
        assert capsys.readouterr().out == "digits version 1: AVAILABLE\n"
        # The system's roots do not trust the private CA; plaintext is refused on a TLS port.
        assert main(["--target", target, "--tls", "--timeout", "3", "status", "--model", "digits"]) == 1
        assert main(["--target", target, "--timeout", "3", "status", "--model", "digits"]) == 1
        assert capsys.readouterr().err.count("ml-client: UNAVAILABLE") == 2
    finally:
        server.stop()
