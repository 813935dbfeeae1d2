"""The `rpc` wrapper's deadline, in-process: a handler answered in its first step runs bare, one
that waits runs under the deadline's timer (the same over a real server: test_guard.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from serving.admission import Admission
from serving.errors import InvalidArgument
from serving.metrics import Metrics
from serving.proto import apis_pb2
from serving.protocol.grpc.server import _Servicer, rpc

RAW = apis_pb2.GetModelStatusRequest(model_spec=apis_pb2.ModelSpec(name="m")).SerializeToString()


class Aborted(Exception):
    pass


class Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def cancelled(self) -> bool:
        return False

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise Aborted(message)


class Toy(_Servicer):
    def __init__(self) -> None:
        self.metrics, self.admission, self.tokens = Metrics(), Admission(), {}
        self.timers_armed = 0
        self.never: asyncio.Future[None] | None = None

    @rpc("status", apis_pb2.GetModelStatusRequest)
    async def Instant(self, request: apis_pb2.GetModelStatusRequest, context: Any) -> str:
        self.timers_armed = len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        return f"answer for {request.model_spec.name}"

    @rpc("status", apis_pb2.GetModelStatusRequest)
    async def Steps(self, request: apis_pb2.GetModelStatusRequest, context: Any) -> str:
        for _ in range(3):
            await asyncio.sleep(0)  # (a bare yield to the task)
        self.timers_armed = len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)  # (a future)
        return "stepped"

    @rpc("status", apis_pb2.GetModelStatusRequest)
    async def FailsLater(self, request: apis_pb2.GetModelStatusRequest, context: Any) -> str:
        await asyncio.sleep(0)
        raise InvalidArgument("refused after a wait")

    @rpc("status", apis_pb2.GetModelStatusRequest)
    async def Hangs(self, request: apis_pb2.GetModelStatusRequest, context: Any) -> str:
        self.never = asyncio.get_running_loop().create_future()
        try:
            await self.never
        except asyncio.CancelledError:
            self.never = None  # it saw the cancel
            raise
        return "never"


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.mark.parametrize("remaining", [None, 30.0])
def test_an_answer_in_the_first_step_arms_no_timer(remaining: float | None) -> None:
    toy = Toy()
    assert _run(toy.Instant(RAW, Context(remaining))) == "answer for m"
    assert toy.timers_armed == 0


def test_a_handler_that_waits_runs_under_the_deadline_and_gets_what_it_awaited() -> None:
    toy = Toy()
    assert _run(toy.Steps(RAW, Context(30.0))) == "stepped"
    assert toy.timers_armed == 1  # the deadline's


def test_an_error_after_a_wait_keeps_its_code() -> None:
    context = Context(30.0)
    with pytest.raises(Aborted):
        _run(Toy().FailsLater(RAW, context))
    assert context.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "refused after a wait")


def test_a_waiting_handler_past_its_deadline_is_cancelled_and_answered_deadline_exceeded() -> None:
    toy, context = Toy(), Context(0.05)
    with pytest.raises(Aborted):
        _run(toy.Hangs(RAW, context))
    assert context.aborted == (grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it was answered")
    assert toy.never is None  # the cancel reached the handler's own await


def test_a_cancel_from_outside_reaches_a_waiting_handler() -> None:
    toy = Toy()

    async def cancel_it() -> None:
        task = asyncio.ensure_future(toy.Hangs(RAW, Context(30.0)))
        while toy.never is None:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    _run(cancel_it())
    assert toy.never is None
