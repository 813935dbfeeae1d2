"""Bearer tokens: what arrives at the server (gRPC metadata, HTTP header) from the library, the CLI
flags (`--token`, `--token-file`, `$ML_CLIENT_TOKEN`) and the Locust users (`$LOADTEST_TOKEN`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.__main__ import main
from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient
from tests.clients.fake_servers import Abort, Answer, ScriptedGrpc, ScriptedHttp, grpc_server, http_server
from tests.loadtests.test_workload import write_data_dir
from tests.serving.fixtures import REPO_ROOT


@pytest.fixture
def http() -> Iterator[ScriptedHttp]:
    scripted = ScriptedHttp()
    with http_server(scripted):
        yield scripted


@pytest.fixture
def rpc() -> Iterator[tuple[ScriptedGrpc, str]]:
    servicer = ScriptedGrpc()
    with grpc_server(servicer) as target:
        yield servicer, target


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ML_CLIENT_TOKEN", raising=False)


def grpc_tokens(servicer: ScriptedGrpc) -> list[str | None]:
    return [c.metadata.get("authorization") for c in servicer.calls]


def http_tokens(http: ScriptedHttp) -> list[str | None]:
    return [r.headers.get("Authorization") for r in http.requests]


def test_no_token_sends_no_authorization(rpc: tuple[ScriptedGrpc, str], http: ScriptedHttp) -> None:
    servicer, target = rpc
    with GrpcClient(target, timeout=10) as grpc_client, RestClient(http.url, timeout=10) as rest_client:
        grpc_client.status("digits")
        rest_client.status("digits")
    assert grpc_tokens(servicer) == [None] and http_tokens(http) == [None]


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "caf\u00e9"])
def test_tokens_that_cannot_travel_are_refused(token: str) -> None:
    for make in (lambda: GrpcClient("127.0.0.1:1", token=token), lambda: RestClient("http://x", token=token)):
        with pytest.raises(ClientError) as raised:
            make()
        assert raised.value.code == "INVALID_ARGUMENT" and "token" in raised.value.message


def test_unauthenticated_is_not_retried(http: ScriptedHttp) -> None:
    http.repeat = Answer(401, body={"error": "missing or unknown bearer token"})
    with RestClient(http.url, token="wrong", timeout=10) as client, pytest.raises(ClientError) as raised:
        client.metadata("digits")
    assert (raised.value.code, raised.value.http_status) == ("UNAUTHENTICATED", 401)
    assert raised.value.message == "missing or unknown bearer token" and len(http.requests) == 1
    servicer = ScriptedGrpc(repeat=Abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token"))
    with (
        grpc_server(servicer) as target,
        GrpcClient(target, token="wrong", timeout=10) as grpc_client,
        pytest.raises(ClientError) as raised,
    ):
        grpc_client.metadata("digits")
    assert (raised.value.code, raised.value.http_status) == ("UNAUTHENTICATED", 401)
    assert grpc_tokens(servicer) == ["Bearer wrong"]


# -- ml-client -----------------------------------------------------------------------------------


def token_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "token.txt"
    path.write_text(text)
    return str(path)


def test_cli_token_file_reaches_both_transports(
    rpc: tuple[ScriptedGrpc, str], http: ScriptedHttp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = rpc
    path = token_file(tmp_path, "  tok-123\n")
    assert main(["--target", target, "--token-file", path, "status", "--model", "digits"]) == 0
    assert main(["--rest", "--url", http.url, "status", "--model", "digits", "--token-file", path]) == 0
    assert capsys.readouterr().out == "digits version 1: AVAILABLE\n" * 2
    assert grpc_tokens(servicer) == ["Bearer tok-123"] and http_tokens(http) == ["Bearer tok-123"]


def test_cli_token_flag_and_environment(
    rpc: tuple[ScriptedGrpc, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = rpc
    monkeypatch.setenv("ML_CLIENT_TOKEN", "from-env\n")
    assert main(["--target", target, "status", "--model", "digits"]) == 0
    assert main(["--target", target, "--token", "from-flag", "status", "--model", "digits"]) == 0
    assert grpc_tokens(servicer) == ["Bearer from-env", "Bearer from-flag"]


def test_cli_unauthenticated_exits_1_with_a_hint(
    http: ScriptedHttp, capsys: pytest.CaptureFixture[str]
) -> None:
    http.repeat = Answer(401, body={"error": "missing bearer token"})
    assert main(["--rest", "--url", http.url, "status", "--model", "digits"]) == 1
    assert capsys.readouterr().err == (
        "ml-client: UNAUTHENTICATED (HTTP 401): missing bearer token (give --token or --token-file)\n"
    )
    assert len(http.requests) == 1


def test_cli_retries_flag(capsys: pytest.CaptureFixture[str]) -> None:
    servicer = ScriptedGrpc(repeat=Abort(grpc.StatusCode.UNAVAILABLE, "loading"))
    with grpc_server(servicer) as target:
        assert main(["--target", target, "--retries", "0", "status", "--model", "digits"]) == 1
        assert len(servicer.calls) == 1
        assert main(["--target", target, "--retries", "1", "status", "--model", "digits"]) == 1
        assert len(servicer.calls) == 3
    assert capsys.readouterr().err.splitlines() == [
        "ml-client: UNAVAILABLE: loading",
        "ml-client: UNAVAILABLE: loading (after 2 attempts)",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), (" \n\t", "is empty"), ("two words", "visible ASCII"), (None, "cannot read")],
)
def test_cli_unusable_token_file_exits_2(
    tmp_path: Path, text: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = token_file(tmp_path, text) if text is not None else str(tmp_path / "missing.txt")
    assert main(["--target", "127.0.0.1:1", "--token-file", path, "status", "--model", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ml-client: error: --token-file: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--token", "a", "--token-file", "t.txt", "status", "--model", "digits"],
        ["--token", "a", "status", "--model", "digits", "--token-file", "t.txt"],
    ],
)
def test_cli_token_flags_exclude_each_other(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "--token" in err and ("not allowed with" in err or "not both" in err)


# -- Locust --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_locust_users_send_the_token(
    rpc: tuple[ScriptedGrpc, str], http: ScriptedHttp, tmp_path: Path
) -> None:
    """A few seconds of a real headless Locust run: both users send $LOADTEST_TOKEN."""
    servicer, target = rpc
    env = {**os.environ, "LOADTEST_TOKEN": "load-tok"}
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "-u", "2", "-r", "2",
         "-t", "20s", "--host", http.url, "--grpc-target", target, "--models", "digits",
         "--data-dir", str(write_data_dir(tmp_path / "data")), "--think-ms", "0", "--max-requests", "20",
         "--only-summary", "--loglevel", "WARNING", "GrpcUser", "RestUser"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    predicts = [r for r in http.requests if r.path.endswith(":predict")]
    assert predicts and {r.headers.get("Authorization") for r in predicts} == {"Bearer load-tok"}
    assert len(http.requests) > len(predicts)  # the plan's status and metadata calls, with the token too
    assert set(http_tokens(http)) == {"Bearer load-tok"}
    assert servicer.calls and set(grpc_tokens(servicer)) == {"Bearer load-tok"}
