"""Retries with exponential backoff and jitter, within one deadline per call, for both transports.

A call is tried again only when its failure is marked retryable by the transport (gRPC
`UNAVAILABLE` / `RESOURCE_EXHAUSTED`; HTTP 429 / 503 and refused or reset connections) and raised as
`RetryableError`. Every other `ClientError` ends the call at once. Between attempts the client waits
what the server asked for (gRPC trailing metadata `grpc-retry-pushback-ms`, HTTP `Retry-After`), or
else a backoff drawn uniformly from [0, min(max_backoff, backoff * 2**(n-1))] ("full jitter", as the
gRPC retry design does). No wait ever runs past the call's deadline: when the next attempt could only
start after it, the call fails with the last attempt's status, and the message says how many attempts
were made.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from clients.errors import ClientError

DEFAULT_RETRIES = 2  # 3 attempts in all
DEFAULT_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 2.0
BACKOFF_MULTIPLIER = 2.0

# The gRPC retry design's (A6) trailing metadata key; HTTP's own header.
PUSHBACK_METADATA_KEY = "grpc-retry-pushback-ms"
RETRY_AFTER_HEADER = "Retry-After"

T = TypeVar("T")


class RetryableError(Exception):
    """Raised by one attempt: it failed with `error`, and trying again may succeed.

    `pushback_s`: how long the server asked the client to wait first (None: it did not say).
    """

    def __init__(self, error: ClientError, pushback_s: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.pushback_s = pushback_s


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a client retries; `retries=0` turns retrying off."""

    retries: int = DEFAULT_RETRIES
    backoff_seconds: float = DEFAULT_BACKOFF_S
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ClientError(
                "INVALID_ARGUMENT", None, f"retries must be an integer >= 0, got {self.retries!r}"
            )
        for name in ("backoff_seconds", "max_backoff_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ClientError("INVALID_ARGUMENT", None, f"{name} must be >= 0, got {value!r}")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry), jittered."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * BACKOFF_MULTIPLIER ** (retry - 1))
        return (rng or _RANDOM).uniform(0.0, ceiling)


_RANDOM = random.Random()


def check_timeout(timeout: float) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ClientError(
            "INVALID_ARGUMENT", None, f"timeout must be a positive number of seconds, got {timeout!r}"
        )
    return float(timeout)


def deadline_after(timeout: float, clock: Callable[[], float] = time.monotonic) -> float:
    """The absolute deadline (on `clock`) of a call given `timeout` seconds from now."""
    return clock() + check_timeout(timeout)


def run_with_retries(
    attempt: Callable[[float], T],
    policy: RetryPolicy,
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Call `attempt(seconds_left)` until it succeeds, fails for good, or retries or time run out.

    `deadline` is absolute, on `clock`. `attempt` raises `RetryableError` for a failure worth trying
    again and `ClientError` for any other; the error that ends the call is a `ClientError` with the
    last attempt's code and HTTP status.
    """
    attempts = 0
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise ClientError("DEADLINE_EXCEEDED", None, "the call's deadline passed before it could be sent")
        attempts += 1
        try:
            return attempt(remaining)
        except RetryableError as failure:
            error = failure.error
            if attempts > policy.retries:
                raise _given_up(error, attempts, "") from error.__cause__
            if failure.pushback_s is not None:
                delay = failure.pushback_s
                why = f"the server asked to wait {delay:g} s, past the call's deadline"
            else:
                delay = policy.backoff(attempts, rng)
                why = "the next backoff would pass the call's deadline"
            if delay >= deadline - clock():
                raise _given_up(error, attempts, why) from error.__cause__
            sleep(delay)
            if deadline - clock() <= 0:
                raise _given_up(error, attempts, "the call's deadline passed") from error.__cause__


def _given_up(error: ClientError, attempts: int, why: str) -> ClientError:
    """The last attempt's error, saying how many attempts were made (unchanged after only one)."""
    if attempts == 1 and not why:
        return error
    note = f"after {attempts} attempt{'s' if attempts > 1 else ''}" + (f"; {why}" if why else "")
    return ClientError(error.code, error.http_status, f"{error.message} ({note})", attempts=attempts)


def parse_pushback_ms(value: str | bytes) -> float | None:
    """`grpc-retry-pushback-ms` in seconds; None when the server says not to retry (negative or garbage)."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if not (text.isascii() and text.isdigit()):  # A6: a negative or unparseable value means "do not retry"
        return None
    return int(text) / 1000.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` (delay-seconds or an HTTP-date) in seconds from `now`; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)
