"""Retries, backoff, server pushback and deadlines: the loop on a fake clock, the clients over loopback.

The loop's arithmetic is checked on a fake clock (no sleeping). The clients are checked against
scripted servers on 127.0.0.1 (`tests.clients.fake_servers`) that count every attempt; their
backoff is made tiny, and the server's pushback is 0 where the test wants another attempt.
"""

from __future__ import annotations

import pickle
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any

import grpc
import numpy as np
import pytest

from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient
from clients.retries import (
    PUSHBACK_METADATA_KEY,
    RetryableError,
    RetryPolicy,
    parse_pushback_ms,
    parse_retry_after,
    run_with_retries,
)
from tests.clients.fake_servers import (
    Abort,
    Answer,
    ScriptedGrpc,
    ScriptedHttp,
    grpc_server,
    http_server,
    resetting_server,
)

FAST: dict[str, Any] = {"backoff_seconds": 0.001, "max_backoff_seconds": 0.002}
IMAGES = np.zeros((2, 28, 28, 1), dtype=np.float32)  # [N,28,28,1]


# -- the loop, on a fake clock --------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Ceiling(random.Random):
    """Jitter that always draws the top of its range, so the backoff's ceiling is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def scripted_attempts(
    fake: FakeTime, failures: list[Exception], *, takes_s: float = 0.0
) -> tuple[list[float], Callable[[float], str]]:
    """An attempt that fails with `failures` in turn (each after `takes_s`), then returns "done"."""
    seconds_left: list[float] = []

    def attempt(remaining: float) -> str:
        seconds_left.append(remaining)
        fake.now += takes_s
        if failures:
            raise failures.pop(0)
        return "done"

    return seconds_left, attempt


def unavailable(pushback_s: float | None = None) -> RetryableError:
    return RetryableError(ClientError("UNAVAILABLE", 503, "not ready"), pushback_s)


def test_backoff_doubles_up_to_its_cap_with_full_jitter() -> None:
    policy = RetryPolicy(retries=7, backoff_seconds=0.1, max_backoff_seconds=1.0)
    fake = FakeTime()
    _, attempt = scripted_attempts(fake, [unavailable() for _ in range(7)])
    assert (
        run_with_retries(attempt, policy, fake.now + 60, clock=fake.clock, sleep=fake.sleep, rng=Ceiling())
        == "done"
    )
    assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    drawn = [policy.backoff(n, random.Random(seed)) for seed in range(50) for n in (1, 3)]
    assert all(0.0 <= d <= 0.4 for d in drawn) and len(set(drawn)) == len(drawn)  # jittered


def test_default_policy_makes_three_attempts_then_says_so() -> None:
    fake = FakeTime()
    seconds_left, attempt = scripted_attempts(fake, [unavailable() for _ in range(5)])
    with pytest.raises(ClientError) as raised:
        run_with_retries(attempt, RetryPolicy(), fake.now + 30, clock=fake.clock, sleep=fake.sleep)
    assert len(seconds_left) == 3 and len(fake.sleeps) == 2
    assert all(0 <= s <= 0.1 * 2**i for i, s in enumerate(fake.sleeps))
    error = raised.value
    assert (error.code, error.http_status, error.attempts) == ("UNAVAILABLE", 503, 3)
    assert error.message == "not ready (after 3 attempts)"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.http_status, copy.message, copy.attempts) == (
        "UNAVAILABLE",
        503,
        error.message,
        3,
    )


def test_pushback_replaces_the_backoff_and_attempts_share_one_deadline() -> None:
    fake = FakeTime()
    seconds_left, attempt = scripted_attempts(fake, [unavailable(1.5), unavailable(0.0)], takes_s=2.0)
    policy = RetryPolicy(retries=5, backoff_seconds=0.5)
    assert run_with_retries(attempt, policy, fake.now + 10, clock=fake.clock, sleep=fake.sleep) == "done"
    assert fake.sleeps == [1.5, 0.0]
    # 10 s in all: 2 s per attempt and the 1.5 s the server asked for come out of it.
    assert seconds_left == pytest.approx([10.0, 6.5, 4.5])


def test_a_wait_past_the_deadline_ends_the_call_at_once() -> None:
    fake = FakeTime()
    seconds_left, attempt = scripted_attempts(fake, [unavailable(30.0)], takes_s=0.1)
    with pytest.raises(ClientError) as raised:
        run_with_retries(attempt, RetryPolicy(), fake.now + 5, clock=fake.clock, sleep=fake.sleep)
    assert len(seconds_left) == 1 and fake.sleeps == []
    assert raised.value.code == "UNAVAILABLE"
    assert "after 1 attempt; the server asked to wait 30 s, past the call's deadline" in raised.value.message


def test_the_deadline_bounds_any_number_of_retries() -> None:
    fake = FakeTime()
    seconds_left, attempt = scripted_attempts(fake, [unavailable(0.0) for _ in range(100)], takes_s=0.3)
    with pytest.raises(ClientError) as raised:
        run_with_retries(
            attempt, RetryPolicy(retries=100), fake.now + 1.0, clock=fake.clock, sleep=fake.sleep
        )
    assert seconds_left == pytest.approx([1.0, 0.7, 0.4, 0.1])
    assert raised.value.code == "UNAVAILABLE" and raised.value.attempts == 4


def test_other_errors_and_retries_0_end_after_one_attempt() -> None:
    refused = ClientError("INVALID_ARGUMENT", 400, "bad input")
    retryable = unavailable()
    cases: list[tuple[Exception, ClientError, RetryPolicy]] = [
        (refused, refused, RetryPolicy()),
        (retryable, retryable.error, RetryPolicy(retries=0)),
    ]
    for failure, expected, policy in cases:
        fake = FakeTime()
        seconds_left, attempt = scripted_attempts(fake, [failure])
        with pytest.raises(ClientError) as raised:
            run_with_retries(attempt, policy, fake.now + 30, clock=fake.clock, sleep=fake.sleep)
        assert raised.value is expected and len(seconds_left) == 1 and fake.sleeps == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"backoff_seconds": -0.1}, "backoff_seconds"),
    ],
)
def test_policy_is_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ClientError, match=field):
        RetryPolicy(**kwargs)
    with pytest.raises(ClientError, match=field):
        GrpcClient("127.0.0.1:1", **kwargs)


def test_timeouts_are_checked() -> None:
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ClientError, match="timeout"):
            RestClient("http://127.0.0.1:1", timeout=bad)
    with GrpcClient("127.0.0.1:1") as client, pytest.raises(ClientError, match="timeout"):
        client.status("digits", timeout=0)


def test_pushback_values() -> None:
    assert parse_pushback_ms("250") == 0.25 and parse_pushback_ms(b"0") == 0.0
    assert parse_pushback_ms("-1") is None and parse_pushback_ms("soon") is None  # A6: do not retry
    assert parse_retry_after(None) is None and parse_retry_after("garbage") is None
    assert parse_retry_after("0") == 0.0 and parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("-3") is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7.0)
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now=now) == 0.0  # already past


# -- REST against a scripted aiohttp server -----------------------------------------------------------


@pytest.fixture
def http() -> Iterator[ScriptedHttp]:
    scripted = ScriptedHttp()
    with http_server(scripted):
        yield scripted


@pytest.mark.parametrize("status", [503, 429])
def test_rest_retries_503_and_429_after_retry_after(http: ScriptedHttp, status: int) -> None:
    http.script = [Answer(status, {"Retry-After": "0"}), Answer(status, {"Retry-After": "0"})]
    with RestClient(http.url, token="s3cret", timeout=10) as client:  # default backoff: Retry-After rules
        outputs = client.predict("digits", {"image": IMAGES})
    assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (2, 10)
    assert (http.count("POST"), http.count("GET")) == (3, 1)  # 3 predicts, then the signature once
    assert {r.headers.get("Authorization") for r in http.requests} == {"Bearer s3cret"}


def test_rest_gives_up_after_the_retries_with_the_last_status(http: ScriptedHttp) -> None:
    http.repeat = Answer(503, body={"error": "model digits is loading"})
    with RestClient(http.url, timeout=10, retries=3, **FAST) as client, pytest.raises(ClientError) as raised:
        client.status("digits")
    assert http.count("GET") == 4
    error = raised.value
    assert (error.code, error.http_status, error.attempts) == ("UNAVAILABLE", 503, 4)
    assert error.message == "model digits is loading (after 4 attempts)"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (404, "NOT_FOUND"),
        (413, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (504, "DEADLINE_EXCEEDED"),
    ],
)
def test_rest_never_retries_other_errors(http: ScriptedHttp, status: int, code: str) -> None:
    http.repeat = Answer(status, {"Retry-After": "0"}, {"error": "refused"})
    with RestClient(http.url, timeout=10, **FAST) as client, pytest.raises(ClientError) as raised:
        client.predict("digits", {"image": IMAGES})
    assert http.count("POST") == 1
    assert (raised.value.code, raised.value.http_status, raised.value.message) == (code, status, "refused")


def test_rest_pushback_past_the_deadline_fails_at_once(http: ScriptedHttp) -> None:
    http.repeat = Answer(503, {"Retry-After": "30"})
    started = time.monotonic()
    with RestClient(http.url, timeout=2) as client, pytest.raises(ClientError) as raised:
        client.status("digits")
    assert time.monotonic() - started < 1.5  # neither 30 s nor the 2 s deadline were waited out
    assert http.count("GET") == 1 and raised.value.code == "UNAVAILABLE"
    assert "the server asked to wait 30 s, past the call's deadline" in raised.value.message


def test_rest_http_date_retry_after(http: ScriptedHttp) -> None:
    http.script = [Answer(503, {"Retry-After": formatdate(time.time() - 5, usegmt=True)})]
    with RestClient(http.url, timeout=10) as client:
        assert client.status("digits")[0].state == "AVAILABLE"
    assert http.count("GET") == 2


def test_rest_deadline_bounds_the_whole_retried_call(http: ScriptedHttp) -> None:
    http.repeat = Answer(503, {"Retry-After": "0"}, delay_s=0.3)
    started = time.monotonic()
    with RestClient(http.url, timeout=1.0, retries=100) as client, pytest.raises(ClientError) as raised:
        client.status("digits")
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed  # 100 retries of 0.3 s would take 30 s
    assert raised.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and 2 <= http.count("GET") <= 4


def test_rest_per_call_timeout_overrides_the_default(http: ScriptedHttp) -> None:
    http.script = [Answer(200, body={"model_version_status": []}, delay_s=1.0)]
    with RestClient(http.url, timeout=30) as client, pytest.raises(ClientError) as raised:
        client.status("digits", timeout=0.2)
    assert raised.value.code == "DEADLINE_EXCEEDED" and http.count("GET") == 1  # a timeout is not retried


def test_rest_retries_reset_connections() -> None:
    with resetting_server() as (url, accepted), RestClient(url, timeout=10, **FAST) as client:
        with pytest.raises(ClientError) as raised:
            client.status("digits")
        assert len(accepted) == 3
    assert raised.value.code == "UNAVAILABLE" and raised.value.http_status is None
    assert "(after 3 attempts)" in raised.value.message


def test_rest_retries_refused_connections() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # bound, never listening: refused
        with RestClient(url, timeout=10, **FAST) as client, pytest.raises(ClientError) as raised:
            client.status("digits")
    assert raised.value.code == "UNAVAILABLE" and raised.value.attempts == 3


# -- gRPC against a scripted grpc.server ------------------------------------------------------------


@contextmanager
def grpc_client(servicer: ScriptedGrpc, **kwargs: Any) -> Iterator[GrpcClient]:
    """A GrpcClient on a scripted server of its own."""
    with grpc_server(servicer) as target, GrpcClient(target, **kwargs) as client:
        yield client


def test_grpc_retries_unavailable_then_answers() -> None:
    servicer = ScriptedGrpc([Abort(grpc.StatusCode.UNAVAILABLE), Abort(grpc.StatusCode.UNAVAILABLE)])
    with grpc_server(servicer) as target, GrpcClient(target, token="s3cret", timeout=10, **FAST) as client:
        outputs = client.predict("digits", {"image": IMAGES})
    assert outputs["probabilities"].shape == (2, 10)
    assert [c.method for c in servicer.calls] == ["Predict"] * 3
    assert {c.metadata.get("authorization") for c in servicer.calls} == {"Bearer s3cret"}


def test_grpc_resource_exhausted_waits_the_pushback() -> None:
    pushback = ((PUSHBACK_METADATA_KEY, "0"),)
    servicer = ScriptedGrpc([Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", pushback)])
    # A backoff of 60 s would blow the 10 s deadline: the answer comes because pushback 0 replaced it.
    with grpc_server(servicer) as target, GrpcClient(target, timeout=10, backoff_seconds=60) as client:
        assert client.status("digits")[0].state == "AVAILABLE"
    assert len(servicer.calls) == 2


def test_grpc_pushback_past_the_deadline_fails_at_once() -> None:
    servicer = ScriptedGrpc(
        repeat=Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", ((PUSHBACK_METADATA_KEY, "30000"),))
    )
    started = time.monotonic()
    with grpc_client(servicer, timeout=2) as client, pytest.raises(ClientError) as raised:
        client.predict("digits", {"image": IMAGES})
    assert time.monotonic() - started < 1.5 and len(servicer.calls) == 1
    error = raised.value
    assert (error.code, error.http_status) == ("RESOURCE_EXHAUSTED", 429)
    assert (
        error.message
        == "queue full (after 1 attempt; the server asked to wait 30 s, past the call's deadline)"
    )


def test_grpc_negative_pushback_means_do_not_retry() -> None:
    servicer = ScriptedGrpc(
        repeat=Abort(grpc.StatusCode.UNAVAILABLE, "draining", ((PUSHBACK_METADATA_KEY, "-1"),))
    )
    with grpc_client(servicer, timeout=10, **FAST) as client, pytest.raises(ClientError) as raised:
        client.status("digits")
    assert len(servicer.calls) == 1 and raised.value.code == "UNAVAILABLE"
    assert "the server asked not to retry" in raised.value.message


def test_grpc_gives_up_after_the_retries() -> None:
    servicer = ScriptedGrpc(repeat=Abort(grpc.StatusCode.UNAVAILABLE, "not loaded yet"))
    with grpc_client(servicer, timeout=10, **FAST) as client, pytest.raises(ClientError) as raised:
        client.metadata("digits")
    assert len(servicer.calls) == 3
    assert (raised.value.code, raised.value.message) == ("UNAVAILABLE", "not loaded yet (after 3 attempts)")


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_grpc_never_retries_other_codes(code: grpc.StatusCode) -> None:
    servicer = ScriptedGrpc(repeat=Abort(code, "refused", ((PUSHBACK_METADATA_KEY, "0"),)))
    with grpc_client(servicer, timeout=10, **FAST) as client, pytest.raises(ClientError) as raised:
        client.predict("digits", {"image": IMAGES})
    assert len(servicer.calls) == 1
    assert (raised.value.code, raised.value.message, raised.value.attempts) == (code.name, "refused", 1)


def test_grpc_message_too_large_is_not_retried() -> None:
    servicer = ScriptedGrpc()
    with (
        grpc_client(servicer, timeout=10, max_message_bytes=1024) as client,
        pytest.raises(ClientError) as raised,
    ):
        client.predict("digits", {"image": IMAGES})  # 6 KiB > 1 KiB: refused by gRPC itself
    assert raised.value.code == "RESOURCE_EXHAUSTED" and raised.value.attempts == 1
    assert servicer.calls == []


def test_grpc_deadline_bounds_the_whole_retried_call() -> None:
    servicer = ScriptedGrpc(
        repeat=Abort(grpc.StatusCode.UNAVAILABLE, "busy", ((PUSHBACK_METADATA_KEY, "0"),), delay_s=0.3)
    )
    started = time.monotonic()
    with grpc_client(servicer, timeout=30, retries=100) as client, pytest.raises(ClientError) as raised:
        client.status("digits", timeout=1.0)  # the per-call deadline, not the client's 30 s
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert raised.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    # Every attempt carried what was left of the one deadline (not the client's 30 s), less each
    # time. gRPC rounds a timeout up on the wire (coarser units compress better), so the server may
    # read a little more than the client had left: 1.007 s of a 1 s deadline was seen under load.
    remaining = [c.time_remaining for c in servicer.calls]
    assert 2 <= len(remaining) <= 4 and all(r is not None and r <= 1.1 for r in remaining)
    assert remaining == sorted(remaining, key=lambda r: -(r or 0.0))
