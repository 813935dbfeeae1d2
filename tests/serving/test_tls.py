"""gRPC over TLS with TF Serving's --ssl_config_file, and --grpc_channel_arguments."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from serving import codec
from serving.config import ConfigError, parse_channel_arguments, parse_ssl_text
from serving.proto import apis_pb2, apis_pb2_grpc, config_pb2
from tests.serving.fixtures import start_server, write_tiny_version

pytestmark = pytest.mark.slow


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost, made with the openssl command line."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    )
    return folder / "ca.pem", folder / "server.key", folder / "server.pem"


def test_predict_over_tls(tmp_path: Path) -> None:
    ca, key, cert = make_certificates(tmp_path)
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(
        text_format.MessageToString(
            config_pb2.SSLConfig(server_key=key.read_text(), server_cert=cert.read_text())
        )
    )
    base = tmp_path / "models" / "tiny"
    write_tiny_version(base, 1)
    server = start_server(
        [
            "--model_name",
            "tiny",
            "--model_base_path",
            str(base),
            "--ssl_config_file",
            str(ssl_config),
            "--grpc_channel_arguments",
            "grpc.max_connection_age_ms=60000,grpc.max_connection_age_grace_ms=5000",
        ],
        tmp_path / "server.log",
        wait_serving=False,
    )
    try:
        assert "(TLS)" in server.log()
        request = apis_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.inputs["image"].CopyFrom(codec.from_numpy(np.zeros((1, 28, 28, 1), np.float32)))
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with grpc.secure_channel(f"localhost:{server.grpc_port}", credentials) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            deadline = time.monotonic() + 30
            while True:
                try:
                    response = stub.Predict(request, timeout=5)
                    break
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            assert codec.to_numpy(response.outputs["probabilities"]).shape == (1, 10)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # no plaintext on a TLS port
    finally:
        assert server.stop() == 0, server.log()


def test_config_parsing() -> None:
    assert parse_channel_arguments("grpc.max_connection_age_ms=300000, grpc.lb_policy_name=round_robin") == (
        ("grpc.max_connection_age_ms", 300000),
        ("grpc.lb_policy_name", "round_robin"),
    )
    with pytest.raises(ConfigError, match="key=value"):
        parse_channel_arguments("oops")
    with pytest.raises(ConfigError, match="both required"):
        parse_ssl_text('server_key: "x"')
    with pytest.raises(ConfigError, match="custom_ca"):
        parse_ssl_text('server_key: "k" server_cert: "c" client_verify: true')
    tls = parse_ssl_text('server_key: "k" server_cert: "c" custom_ca: "a" client_verify: true')
    assert (tls.server_key, tls.custom_ca, tls.client_verify) == (b"k", b"a", True)
