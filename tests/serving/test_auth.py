"""Who gets in, over real processes: bearer tokens on both APIs (exemptions, rotation, the
project's clients), and REST over TLS and mutual TLS from the same SSLConfig as gRPC."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient
from serving import codec
from serving.auth import TokenFile
from serving.errors import Unauthenticated
from serving.launcher import wait_for_health
from serving.proto import apis_pb2, apis_pb2_grpc, config_pb2
from tests.serving.fixtures import ServerProcess, start_server, write_tiny_version
from tests.serving.test_tls import make_certificates

pytestmark = pytest.mark.slow

TOKENS = ("alpha-token-1", "beta-token-2")


def _request() -> apis_pb2.PredictRequest:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["image"].CopyFrom(codec.from_numpy(np.zeros((1, 28, 28, 1), np.float32)))
    return request


def _grpc_code(server: ServerProcess, token: str | None, method: str = "predict") -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            if method == "predict":
                apis_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=10, metadata=metadata)
            elif method == "status":
                request = apis_pb2.GetModelStatusRequest()
                request.model_spec.name = "tiny"
                apis_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10, metadata=metadata)
            else:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=metadata)
        except grpc.RpcError as error:
            assert error.code() != grpc.StatusCode.UNAUTHENTICATED or "alpha" not in (error.details() or "")
            return error.code()
    return grpc.StatusCode.OK


def _rest(server: ServerProcess, path: str, token: str | None, body: bytes | None = None) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(server.rest_url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        answer = json.loads(error.read())
        assert "alpha" not in answer["error"] and "beta" not in answer["error"]  # never says which exist
        return error.code, dict(error.headers)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# clients\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tokens_file: Path) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("authserver")
    write_tiny_version(folder / "tiny", 1)
    process = start_server(
        ["--model_name", "tiny", "--model_base_path", str(folder / "tiny"), "--auth_token_file", str(tokens_file)],
        folder / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()


BODY = json.dumps({"instances": np.zeros((1, 28, 28, 1)).tolist()}).encode()


def test_grpc_needs_a_known_token_and_health_is_exempt(server: ServerProcess) -> None:
    assert _grpc_code(server, None) == grpc.StatusCode.UNAUTHENTICATED
    assert _grpc_code(server, "wrong") == grpc.StatusCode.UNAUTHENTICATED
    assert _grpc_code(server, TOKENS[0][:-1]) == grpc.StatusCode.UNAUTHENTICATED  # a prefix is not enough
    assert _grpc_code(server, TOKENS[0]) == grpc.StatusCode.OK
    assert _grpc_code(server, TOKENS[1]) == grpc.StatusCode.OK
    assert _grpc_code(server, None, "status") == grpc.StatusCode.UNAUTHENTICATED
    assert _grpc_code(server, TOKENS[1], "status") == grpc.StatusCode.OK
    assert _grpc_code(server, None, "health") == grpc.StatusCode.OK


def test_rest_needs_a_known_token_and_metrics_are_exempt(server: ServerProcess) -> None:
    status, headers = _rest(server, "/v1/models/tiny:predict", None, BODY)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert _rest(server, "/v1/models/tiny:predict", "wrong", BODY)[0] == 401
    assert _rest(server, "/v1/models/tiny:predict", TOKENS[0], BODY)[0] == 200
    assert _rest(server, "/v1/models/tiny", None)[0] == 401
    assert _rest(server, "/v1/models/tiny", TOKENS[1])[0] == 200
    assert _rest(server, "/monitoring/prometheus/metrics", None)[0] == 200


def test_the_clients_send_their_token(server: ServerProcess) -> None:
    image = np.zeros((28, 28, 1), np.float32)
    with GrpcClient(server.grpc_target, token=TOKENS[0]) as client:
        assert client.predict("tiny", {"image": image[None]})["probabilities"].shape == (1, 10)
    with GrpcClient(server.grpc_target, token="wrong") as client, pytest.raises(ClientError) as caught:
        client.predict("tiny", {"image": image[None]})
    assert caught.value.code == "UNAUTHENTICATED" and caught.value.attempts == 1  # not retried
    with RestClient(server.rest_url, token=TOKENS[1]) as rest:
        assert rest.predict("tiny", {"image": image[None]})["probabilities"].shape == (1, 10)


def test_a_rotated_token_file_takes_effect_without_a_restart(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    write_tiny_version(tmp_path / "tiny", 1)
    process = start_server(
        [
            "--model_name",
            "tiny",
            "--model_base_path",
            str(tmp_path / "tiny"),
            "--auth_token_file",
            str(tokens),
            "--auth_exempt",
            "",
        ],
        tmp_path / "server.log",
        wait_serving=False,
    )
    try:
        assert _grpc_code(process, None, "health") == grpc.StatusCode.UNAUTHENTICATED  # nothing exempt
        assert _rest(process, "/monitoring/prometheus/metrics", None)[0] == 401
        wait_for_health(process.grpc_target, time.monotonic() + 30, metadata=(("authorization", "Bearer old-token"),))
        assert _grpc_code(process, "old-token") == grpc.StatusCode.OK
        replacement = tmp_path / "tokens.new"  # as a Secret update does: a new file renamed into place
        replacement.write_text("new-token\n")
        os.replace(replacement, tokens)
        deadline = time.monotonic() + 10
        while _grpc_code(process, "old-token") == grpc.StatusCode.OK:  # re-read within about a second
            assert time.monotonic() < deadline
        assert _grpc_code(process, "old-token") == grpc.StatusCode.UNAUTHENTICATED
        assert _grpc_code(process, "new-token") == grpc.StatusCode.OK
        assert _rest(process, "/v1/models/tiny:predict", "new-token", BODY)[0] == 200
    finally:
        assert process.stop() == 0
    assert "token file" in process.log() and "new-token" not in process.log()


def test_token_file_unit(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("one\ntwo\n")
    tokens = TokenFile(path, check_seconds=0)
    tokens.check("Bearer one")
    tokens.check("bearer   two")
    for bad in (None, "", "one", "Basic b25lOg==", "Bearer three", "Bearer on"):
        with pytest.raises(Unauthenticated):
            tokens.check(bad)
    path.write_text("")  # an emptied file keeps the tokens in force (and is logged)
    tokens.check("Bearer one")
    path.unlink()
    tokens.check("Bearer two")
    with pytest.raises(ValueError, match="cannot read"):
        TokenFile(tmp_path / "missing")


def _client_certificate(folder: Path) -> tuple[Path, Path]:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=client")
    openssl(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "1",
    )  # fmt: skip
    return folder / "client.pem", folder / "client.key"


@pytest.mark.parametrize("mutual", [False, True])
def test_rest_over_tls_from_the_same_ssl_config(tmp_path: Path, mutual: bool) -> None:
    ca, key, cert = make_certificates(tmp_path)
    client_cert, client_key = _client_certificate(tmp_path)
    (tmp_path / "ssl.config").write_text(
        text_format.MessageToString(
            config_pb2.SSLConfig(
                server_key=key.read_text(),
                server_cert=cert.read_text(),
                custom_ca=ca.read_text() if mutual else "",
                client_verify=mutual,
            )
        )
    )
    write_tiny_version(tmp_path / "tiny", 1)
    process = start_server(
        ["--model_name", "tiny", "--model_base_path", str(tmp_path / "tiny"), "--ssl_config_file", str(tmp_path / "ssl.config")],
        tmp_path / "server.log",
        wait_serving=False,
    )
    try:
        assert "REST listening on 127.0.0.1" in process.log() and process.log().count("(TLS)") == 2
        context = ssl.create_default_context(cafile=str(ca))
        if mutual:
            context.load_cert_chain(client_cert, client_key)
        url = f"https://localhost:{process.rest_port}/v1/models/tiny"
        deadline = time.monotonic() + 30
        while True:  # until the model is loaded
            with urllib.request.urlopen(url, context=context, timeout=10) as response:
                if json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            assert time.monotonic() < deadline
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):  # plain HTTP: no answer
            urllib.request.urlopen(f"http://127.0.0.1:{process.rest_port}/v1/models/tiny", timeout=10)
        if mutual:  # no client certificate: the handshake fails
            bare = ssl.create_default_context(cafile=str(ca))
            with (
                pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)),
                urllib.request.urlopen(url, context=bare, timeout=10) as response,
            ):
                response.read()
        else:
            with RestClient(f"https://localhost:{process.rest_port}", root_certificates=ca) as rest:
                assert rest.predict("tiny", {"image": np.zeros((1, 28, 28, 1), np.float32)})["probabilities"].shape == (1, 10)
    finally:
        assert process.stop() == 0, process.log()


def test_the_console_page_needs_no_token_but_its_model_list_does(server: ServerProcess) -> None:
    # The page and its script hold no data; the browser sends the token a person types with every
    # API call, the model list included.
    assert _rest(server, "/", None)[0] == 200
    assert _rest(server, "/console/console.js", None)[0] == 200
    assert _rest(server, "/console/api/models", None)[0] == 401
    assert _rest(server, "/console/api/models", TOKENS[1])[0] == 200
    assert _rest(server, "/console/other.js", None)[0] == 401  # not one of the page's files: guarded
