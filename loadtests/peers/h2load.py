"""Drive a gRPC method with `h2load` (nghttp2's HTTP/2 benchmark) and read back what it measured.

gRPC is HTTP/2 POST of a length-prefixed body (see `wire.grpc_frame`) with `content-type:
application/grpc` and `te: trailers`, so h2load can send it from a file. h2load counts an HTTP 200
as a success even when the gRPC status in the trailers is not OK; the caller therefore checks one
real answer per contender first, and `check` compares the response bytes h2load received with the
size of a good answer (a failed gRPC call has no body).

The summary gives min/mean/max only, so latencies come from `--log-file` (one line per request:
start µs since epoch, HTTP status, µs to the end of the response).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_FINISHED = re.compile(r"^finished in ([\d.]+)(s|ms|us), ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.M,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_TRAFFIC = re.compile(r"^traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?, .*?\((\d+)\) data", re.M)


class H2loadError(RuntimeError):
    """h2load failed, or printed something this parser does not understand."""


@dataclass(frozen=True)
class H2loadSummary:
    seconds: float
    rps: float
    total: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    data_bytes: int  # response bodies (DATA frames), gRPC frame prefixes included

    @property
    def errors(self) -> int:
        return self.failed + self.errored + self.timeout


def parse_summary(text: str) -> H2loadSummary:
    """The figures of h2load's end-of-run report (its stdout)."""
    finished, requests = _FINISHED.search(text), _REQUESTS.search(text)
    status, traffic = _STATUS.search(text), _TRAFFIC.search(text)
    if not (finished and requests and status and traffic):
        raise H2loadError(f"unrecognised h2load output:\n{text[-2000:]}")
    total, _started, done, succeeded, failed, errored, timeout = (int(v) for v in requests.groups())
    return H2loadSummary(
        seconds=float(finished[1]) * _UNITS[finished[2]],
        rps=float(finished[3]),
        total=total,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=int(status[1]),
        data_bytes=int(traffic[3]),
    )


def parse_log(text: str) -> tuple[list[float], int]:
    """(latencies in seconds of the HTTP 200 responses, count of other statuses) from `--log-file`."""
    latencies: list[float] = []
    others = 0
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        if fields[1] == "200":
            latencies.append(int(fields[2]) / 1e6)
        else:
            others += 1
    return latencies, others


def command(
    url: str,
    body: Path,
    seconds: float | None,
    requests: int,
    streams: int,
    log: Path | None,
    *,
    http1_connections: int = 0,
) -> list[str]:
    """One connection with `streams` requests in flight, for `seconds` (or `requests` if None).
    With `http1_connections`: that many HTTP/1.1 connections instead, one JSON request in flight
    on each (`streams` is then unused: HTTP/1.1 has no streams)."""
    binary = shutil.which("h2load")
    if binary is None:
        raise H2loadError("h2load is not installed (Debian: apt-get install nghttp2-client)")
    if http1_connections:
        args = [binary, "--h1", "-c", str(http1_connections), "-t", "1", "-m", "1", "-d", str(body)]
        args += ["-H", "content-type: application/json"]
    else:
        args = [binary, "-c", "1", "-t", "1", "-m", str(streams), "-d", str(body)]
        args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    args += ["-D", f"{seconds:g}"] if seconds is not None else ["-n", str(requests)]
    if log is not None:
        args += ["--log-file", str(log)]
    return [*args, url]


def run(
    url: str,
    body: Path,
    seconds: float | None,
    requests: int,
    streams: int,
    log: Path | None = None,
    *,
    http1_connections: int = 0,
) -> H2loadSummary:
    """Run h2load to completion (it stops by itself; a hang is cut after `seconds` + 60 s)."""
    if not url.startswith("http://127.0.0.1:"):
        raise H2loadError(f"the bench sends traffic to 127.0.0.1 only, not {url}")
    limit = (seconds or 0) + 60
    try:
        done = subprocess.run(
            command(url, body, seconds, requests, streams, log, http1_connections=http1_connections),
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise H2loadError(f"h2load did not finish within {limit:.0f} s") from error
    if done.returncode != 0:
        raise H2loadError(f"h2load exited with status {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_summary(done.stdout)


def version() -> str:
    binary = shutil.which("h2load")
    if binary is None:
        return ""
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=10)
    return done.stdout.strip()


def check(summary: H2loadSummary, good_response_bytes: int) -> str:
    """Why the run cannot be trusted ('' when it can): errors, or fewer response bytes than
    `succeeded` good answers would carry (gRPC failures arrive as HTTP 200 without a body)."""
    if summary.succeeded == 0:
        return "no request succeeded"
    if summary.errors:
        return f"{summary.errors} requests failed, errored or timed out"
    if summary.status_2xx != summary.succeeded:
        return f"{summary.succeeded - summary.status_2xx} responses were not HTTP 200"
    expected = summary.succeeded * good_response_bytes
    if summary.data_bytes < 0.9 * expected:
        return (
            f"received {summary.data_bytes} response bytes, a good answer each would be about {expected}: "
            "some calls failed with a non-OK grpc-status"
        )
    return ""
