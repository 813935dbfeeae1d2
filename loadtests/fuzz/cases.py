"""What a fuzz case is, how it is seeded, and how its answer is judged.

A case is a pure function of `(seed, transport, index)`: each index has its own `random.Random`, seeded
from a string (string seeds are hashed with SHA-512, so they do not depend on PYTHONHASHSEED), and
the generators draw from nothing else. So one case can be replayed alone, without generating the
cases before it, and the same seed gives the same cases on every machine.

Judging follows the product contract: every case must be answered, in time, with a client error or
OK and a non-empty message; what counts as a failure is listed in `judge`.
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass, field

# Transport names, as they appear in case ids ("grpc:12", "rest:7").
GRPC = "grpc"
REST = "rest"

# gRPC codes a malformed request may get (the contract's mapping, plus OUT_OF_RANGE).
GRPC_CLIENT_ERRORS = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "NOT_FOUND",
        "RESOURCE_EXHAUSTED",
        "UNIMPLEMENTED",
        "OUT_OF_RANGE",
    }
)
# HTTP 501 is the REST twin of UNIMPLEMENTED (`:regress`): deliberate, not a server error.
HTTP_ALLOWED_5XX = frozenset({501})

# Outcome statuses that are not a wire answer.
TIMEOUT = "TIMEOUT"  # no answer within the per-case timeout: a hang
CONNECTION = "CONNECTION"  # connection refused, reset or closed without an answer
HANGUP = "HANGUP"  # the client itself went away mid-request, as the case says (no answer to judge)


class Expect(enum.Enum):
    """What a case knows about itself: built to be valid, surely invalid, or either."""

    OK = "ok"
    ERROR = "error"
    ANY = "any"


@dataclass(frozen=True)
class GrpcCase:
    index: int
    family: str
    description: str
    method: str  # full method path, "/tensorflow.serving.PredictionService/Predict"
    payload: bytes  # the serialized request (or junk), sent as-is through a raw channel method
    expect: Expect
    deadline: float = 0.0  # a deadline of its own (the client gives up: DEADLINE_EXCEEDED is fine); 0: none


@dataclass(frozen=True)
class RestCase:
    index: int
    family: str
    description: str
    method: str
    target: str  # request-target as sent (already percent-encoded where it needs to be)
    headers: tuple[tuple[str, str], ...]
    body: bytes
    expect: Expect
    json_error: bool = True  # a 4xx must be {"error": "<non-empty>"} (False: the HTTP parser answers)
    raw: bytes = b""  # when set: the whole request, written to the socket as-is
    hangup_after: int = -1  # >= 0: write this many bytes of the request, then close (no answer awaited)


Case = GrpcCase | RestCase


@dataclass
class Notes:
    """A case's description under construction, and what its parts say about its validity."""

    notes: list[str] = field(default_factory=list)
    invalid: bool = False  # some part is surely invalid
    unsure: bool = False  # some part may or may not be accepted

    def note(self, text: str, invalid: bool = False, unsure: bool = False) -> None:
        self.notes.append(text)
        self.invalid |= invalid
        self.unsure |= unsure

    @property
    def expect(self) -> Expect:
        if self.invalid:
            return Expect.ERROR
        return Expect.ANY if self.unsure else Expect.OK

    @property
    def text(self) -> str:
        return " ".join(self.notes)


@dataclass(frozen=True)
class Outcome:
    status: str  # gRPC code name ("OK", "INVALID_ARGUMENT"), "HTTP 400", TIMEOUT or CONNECTION
    message: str  # gRPC details, the REST error message, or the body's start
    seconds: float
    body_ok: bool = True  # the answer's body is what its status promises (parsed OK response, JSON error)


def case_rng(seed: int, transport: str, index: int) -> random.Random:
    """The one random source of case `index`: independent of every other case."""
    return random.Random(f"loadtests.fuzz:{seed}:{transport}:{index}")


def case_id(case: Case) -> str:
    return f"{GRPC if isinstance(case, GrpcCase) else REST}:{case.index}"


def judge(case: Case, outcome: Outcome) -> str | None:
    """None if the answer is acceptable, else why it is a failure (one short line)."""
    status = outcome.status
    if status == HANGUP:
        return None  # only the server's survival is judged (after every case)
    if status == TIMEOUT:
        if isinstance(case, GrpcCase) and case.deadline:
            return None  # the case's own short deadline passed: the client gave up, as it asked
        return "no answer within the per-case timeout (hang)"
    if status == CONNECTION:
        return f"no answer: {outcome.message}"
    if isinstance(case, GrpcCase):
        if status == "OK":
            if not outcome.body_ok:
                return "OK with a response that does not parse as the method's response message"
            if case.expect is Expect.ERROR:
                return "accepted (OK) a request that is surely invalid"
            return None
        if status not in GRPC_CLIENT_ERRORS:
            return f"gRPC {status}"
        if not outcome.message.strip():
            return f"gRPC {status} with an empty message"
        if case.expect is Expect.OK:
            return f"rejected ({status}) a request built to be valid"
        return None
    code = int(status.split()[1])
    if code >= 500 and code not in HTTP_ALLOWED_5XX:
        return f"HTTP {code}"
    if 200 <= code < 300:
        if not outcome.body_ok:
            return f"HTTP {code} with a body that is not a JSON object"
        if case.expect is Expect.ERROR:
            return f"accepted (HTTP {code}) a request that is surely invalid"
        return None
    if code < 400 and code not in HTTP_ALLOWED_5XX:
        return f"HTTP {code} (neither an answer nor a client error)"
    if not outcome.message.strip():
        return f"HTTP {code} with an empty error message"
    if case.json_error and not outcome.body_ok:
        return f'HTTP {code} whose body is not {{"error": "<message>"}}'
    if case.expect is Expect.OK:
        return f"rejected (HTTP {code}) a request built to be valid"
    return None


def error_message(body: bytes) -> tuple[str, bool]:
    """A REST error body -> (message, whether it is the API's `{"error": "<non-empty string>"}`)."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:300].decode("utf-8", "replace"), False
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str) and parsed["error"].strip():
        return parsed["error"], True
    return body[:300].decode("utf-8", "replace"), False


def short(value: object, limit: int = 60) -> str:
    """repr() of a value, cut in the middle so a description stays one readable line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...<{len(text)} chars>...{text[-limit // 4 :]}"


def weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    names = [name for name, _ in table]
    return rng.choices(names, weights=[weight for _, weight in table])[0]
