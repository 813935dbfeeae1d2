"""Per-request records: the structured access log (`--access_log`) and what tracing reads.

One `RequestRecord` per request, made by the protocol layer (the gRPC `rpc` decorator, the REST
telemetry middleware) and held in the `CURRENT` context variable while the request runs, so the
data plane and the batcher can fill in what only they know (model version, signature, rows, when
the request waited and when the engine ran it) without any parameter threading through the API
layer. When the request ends, `Telemetry.end` ends its trace span (`serving.tracing`) and hands
the record to the access log.

The access log writes one JSON object per line (to a file, or stderr with `-`) from a writer
thread: the event loop only puts the finished record on a queue (what `logging`'s QueueHandler
and QueueListener do, without a LogRecord per request). With neither the access log nor tracing
on, no record is made: the protocol layer checks one attribute (`telemetry is None`) and the data
plane one context variable.
"""

from __future__ import annotations

import contextvars
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from serving.config import ServerConfig
    from serving.tracing import Tracing

# HTTP status -> gRPC code name, for REST answers no ServingError named (aiohttp's own 404s...).
_STATUS_NAME = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_name(http_status: int) -> str:
    """The gRPC code name of an HTTP status (2xx and 3xx: OK)."""
    if http_status < 400:
        return "OK"
    return _STATUS_NAME.get(http_status, "INTERNAL" if http_status >= 500 else "FAILED_PRECONDITION")


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What is known about one request: set by the protocol layer, filled by the data plane.

    Times are `time.perf_counter()` seconds; `wall` is the epoch time the request began at.
    """

    protocol: str  # "grpc", "rest" (TF Serving's API) or "v2" (Open Inference Protocol)
    transport: str  # "grpc" or "http"
    api: str  # predict, classify, metadata, status, ... (the metrics' api label)
    request: str  # gRPC: "/service/Method"; HTTP: "POST /v1/models/digits:predict"
    route: str  # the span name: "service/Method" or "POST /v1/models/{model}:predict"
    peer: str
    request_bytes: int
    model: str = ""
    version: int | None = None
    signature: str = ""
    rows: int = 0
    status: str = "OK"  # gRPC code name
    http_status: int = 200
    started: float = field(default_factory=time.perf_counter)
    wall: float = field(default_factory=time.time)
    ended: float = 0.0
    # (phase, start, end): "preprocess", "queue" and "compute" intervals, in the order they happened.
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    dispatched: float | None = None  # sent to the engine (batch queue or thread) and not yet running
    trace_id: str = ""
    span: Any = None  # the server span (serving.tracing), when tracing is on

    def describe(self, model: str, version: int, signature: str, rows: int = 0) -> None:
        """What the data plane resolved: the model version and signature that answer, the rows."""
        self.model, self.version, self.signature = model, version, signature
        if rows:
            self.rows = rows

    def phase(self, name: str, start: float, end: float) -> None:
        self.phases.append((name, start, end))

    def dispatch(self) -> None:
        """The request is handed to the engine now: it waits (queue) until `computed` says it ran."""
        self.dispatched = time.perf_counter()

    def computed(self, start: float, end: float) -> None:
        """An engine call holding this request's rows ran from `start` to `end` (any thread)."""
        if self.dispatched is not None:
            self.phases.append(("queue", self.dispatched, max(start, self.dispatched)))
            self.dispatched = None
        self.phases.append(("compute", start, end))

    def finish(self) -> None:
        self.ended = time.perf_counter()
        if self.dispatched is not None:  # it never ran (failed, cancelled, timed out in the queue)
            self.phases.append(("queue", self.dispatched, self.ended))
            self.dispatched = None

    def seconds(self, name: str) -> float:
        """Wall time spent in phase `name` (overlapping intervals, e.g. split batches, count once)."""
        return self.phase_seconds().get(name, 0.0)

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase name, in one pass (the common case: one interval per phase)."""
        spans: dict[str, list[tuple[float, float]]] = {}
        for name, start, end in self.phases:
            spans.setdefault(name, []).append((start, end))
        totals = {}
        for name, intervals in spans.items():
            if len(intervals) == 1:
                totals[name] = intervals[0][1] - intervals[0][0]
                continue
            total, reach = 0.0, float("-inf")
            for start, end in sorted(intervals):
                if end > reach:
                    total += end - max(start, reach)
                    reach = end
            totals[name] = total
        return totals

    def fields(self) -> dict[str, Any]:
        """The access log's JSON object for this request."""
        phases = self.phase_seconds()
        entry: dict[str, Any] = {
            "time": _timestamp(self.wall),
            "protocol": self.protocol,
            "transport": self.transport,
            "api": self.api,
            "request": self.request,
            "model": self.model,
            "version": self.version,
            "signature": self.signature,
            "status": self.status,
            "http_status": self.http_status,
            "rows": self.rows,
            "queue_ms": round(phases.get("queue", 0.0) * 1e3, 3),
            "compute_ms": round(phases.get("compute", 0.0) * 1e3, 3),
            "total_ms": round((self.ended - self.started) * 1e3, 3),
            "request_bytes": self.request_bytes,
            "peer": self.peer,
        }
        if "preprocess" in phases:
            entry["preprocess_ms"] = round(phases["preprocess"] * 1e3, 3)
        if self.trace_id:
            entry["trace_id"] = self.trace_id
        return entry


_second: tuple[int, str] = (-1, "")  # the last whole second formatted (only the writer thread formats)


def _timestamp(wall: float) -> str:
    """RFC 3339 UTC with milliseconds: 2026-01-31T12:00:00.123Z."""
    global _second
    whole = int(wall)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((wall - whole) * 1000):03d}Z"


# The record of the request this task is serving; None when telemetry is off or outside a request.
CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("request_record", default=None)


def current_record() -> RequestRecord | None:
    return CURRENT.get()


def computed(start: float, end: float) -> None:
    """`RequestRecord.computed` on the current request's record, if there is one."""
    record = CURRENT.get()
    if record is not None:
        record.computed(start, end)


def peer_address(peer: str) -> str:
    """gRPC's "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000" as "127.0.0.1:5000" / "[::1]:5000"."""
    for prefix in ("ipv4:", "ipv6:"):
        if peer.startswith(prefix):
            return peer[len(prefix) :]
    return peer


class AccessLog:
    """JSON lines, one per finished request, written by a thread of their own.

    `path` "-" is stderr. Each batch of lines the thread finds waiting is one `write()` on a file
    opened with O_APPEND, so the processes of `--workers` can share one file without tearing lines.
    """

    _STOP = object()
    BATCH_SECONDS = 0.05  # a line is written at most this long after its request ended

    def __init__(self, path: str) -> None:
        self.path = path
        if path == "-":
            self._fd, self._owned = sys.stderr.fileno(), False
        else:
            self._fd = os.open(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._owned = True
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="access-log", daemon=True)
        self._thread.start()

    def write(self, record: RequestRecord) -> None:
        """Called on the event loop: queue the record (formatting happens in the writer thread)."""
        self._queue.put(record)

    def _drain(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            # Let a batch gather: under load the thread then wakes (and takes the GIL from the event
            # loop) a few times a second, not once per request.
            time.sleep(self.BATCH_SECONDS)
            while True:  # everything already waiting goes out in the same write
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for item in items:
                if item is self._STOP:
                    stop = True
                elif isinstance(item, RequestRecord):
                    lines.append(orjson.dumps(item.fields()))
            if lines:
                self._write(b"\n".join(lines) + b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:  # a full disk must not stop the server; say so once per batch
            print(f"access log {self.path}: cannot write: {exc}", file=sys.stderr)

    def close(self) -> None:
        """Write what is queued, then stop the thread (and close the file); once."""
        if not self._thread.is_alive():
            return
        self._queue.put(self._STOP)
        self._thread.join(timeout=5)
        if self._owned:
            os.close(self._fd)


class Telemetry:
    """The access log and tracing of one server, over the same per-request record."""

    def __init__(self, access_log: AccessLog | None = None, tracing: Tracing | None = None) -> None:
        self.access_log = access_log
        self.tracing = tracing

    def begin(
        self,
        *,
        protocol: str,
        transport: str,
        api: str,
        request: str,
        route: str,
        peer: str,
        request_bytes: int,
        model: str = "",
        headers: Any = None,
    ) -> RequestRecord:
        """A new record (and server span, child of the `traceparent` in `headers` if any)."""
        record = RequestRecord(protocol, transport, api, request, route, peer, request_bytes, model=model)
        if self.tracing is not None:
            self.tracing.start(record, headers)
        return record

    def end(self, record: RequestRecord) -> None:
        record.finish()
        if self.tracing is not None:
            self.tracing.finish(record)
        if self.access_log is not None:
            self.access_log.write(record)

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()
        if self.tracing is not None:
            self.tracing.close()


def telemetry_from_config(config: ServerConfig) -> Telemetry | None:
    """The server's telemetry per `--access_log` and `--tracing_exporter`; None when both are off
    (then opentelemetry is not even imported)."""
    tracing = None
    if config.tracing is not None:
        from serving.tracing import Tracing

        tracing = Tracing.from_config(config.tracing)
    access_log = AccessLog(config.access_log) if config.access_log else None
    if access_log is None and tracing is None:
        return None
    return Telemetry(access_log, tracing)
