"""Admission's drain, in-process: the quiet before the ports close counts from the last answer."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.admission import Admission
from serving.errors import Unavailable

QUIET = 0.05


def test_a_closed_admission_refuses_and_counts_what_is_still_in_flight() -> None:
    admission = Admission()
    admission.enter()
    admission.close()
    with pytest.raises(Unavailable):
        admission.enter()
    assert admission.in_flight == 1
    admission.exit()
    assert admission.in_flight == 0


def test_the_quiet_counts_from_the_last_answer_not_only_from_refusals() -> None:
    """A batch that answers every in-flight call at once, with no call refused yet: the callers'
    next calls are on their way, so the ports must stay open `quiet` seconds after those answers
    (closing at once cut them off as CANCELLED)."""

    async def scenario() -> tuple[bool, float]:
        admission = Admission()
        for _ in range(15):
            admission.enter()
        admission.close()
        for _ in range(15):  # the batch's answers, all in one event-loop turn
            admission.exit()
        answered = time.monotonic()
        assert await admission.wait_idle(1.0)
        quiet = await admission.wait_quiet(QUIET, 5.0)
        return quiet, time.monotonic() - answered

    quiet, waited = asyncio.run(scenario())
    assert quiet and waited >= QUIET


def test_the_quiet_counts_from_the_close_when_nothing_was_in_flight() -> None:
    async def scenario() -> float:
        admission = Admission()
        admission.close()
        closed = time.monotonic()
        assert await admission.wait_quiet(QUIET, 5.0)
        return time.monotonic() - closed

    assert asyncio.run(scenario()) >= QUIET


def test_a_refusal_restarts_the_quiet() -> None:
    async def scenario() -> float:
        admission = Admission()
        admission.close()
        await asyncio.sleep(QUIET / 2)
        with pytest.raises(Unavailable):  # a caller still routed here, told to go elsewhere
            admission.enter()
        refused = time.monotonic()
        assert await admission.wait_quiet(QUIET, 5.0)
        return time.monotonic() - refused

    assert asyncio.run(scenario()) >= QUIET


def test_the_quiet_gives_up_at_its_timeout() -> None:
    async def scenario() -> bool:
        admission = Admission()
        admission.close()
        return await admission.wait_quiet(10.0, 0.05)  # a 10 s quiet cannot come within 0.05 s

    assert asyncio.run(scenario()) is False
