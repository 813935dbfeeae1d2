"""Admission: which requests the server takes, and how many it is still answering.

Both protocols call `enter()` when a request's handler starts and `exit()` when its answer has
been computed. Shutdown calls `close()` (from then on `enter()` refuses with UNAVAILABLE, a code
every client may retry elsewhere) and awaits `wait_idle(timeout)`, so every request accepted before
the close gets its answer before the ports shut, then `wait_quiet(...)`: a call still travelling
when gRPC's transport shuts down is cancelled by gRPC core (the client sees CANCELLED, which it
will not retry), so the ports close only once callers have stopped arriving (they were told
UNAVAILABLE and moved on), or the drain time is up. The quiet is counted from the close, the last
refusal and the last answer, whichever came last: a caller answered at the end of the drain sends
its next call right after, and that call must find the port open to be told UNAVAILABLE. Runs on
the event loop only; no locks needed.
"""

from __future__ import annotations

import asyncio
import time

from serving.errors import Unavailable


class Admission:
    def __init__(self) -> None:
        self.in_flight = 0
        self.closed = False
        # Once closed, time.monotonic() of the last sign of callers: the close, a refusal, an answer.
        self.last_activity = 0.0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        """Count one request in, or raise Unavailable once the server is shutting down."""
        if self.closed:
            self.last_activity = time.monotonic()
            raise Unavailable("the server is shutting down; retry on another replica")
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight -= 1
        if self.closed:  # its caller may call again at once: give that call time to be refused
            self.last_activity = time.monotonic()
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def close(self) -> None:
        self.closed = True
        self.last_activity = time.monotonic()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no admitted request is left (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        while self.in_flight:
            self._idle = asyncio.Event()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return self.in_flight == 0
        return True

    async def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Once closed: wait until nothing is in flight and no request has been refused or answered
        for `quiet` seconds (True), or `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            calm_at = self.last_activity + quiet
            if now >= calm_at and self.in_flight == 0:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(max(calm_at - now, 0.005), deadline - now))
