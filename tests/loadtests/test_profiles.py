"""The load profiles as schedules, without Locust (importing Locust would gevent-patch pytest)."""

from __future__ import annotations

import pytest

from loadtests.profiles import MIN_STEP_SECONDS, ProfileConfig, Spike, Steady, Step


def never_measured() -> tuple[float, float | None]:
    raise AssertionError("this profile must not look at the stats")


def test_steady_holds_then_stops() -> None:
    steady = Steady(ProfileConfig(users=8, spawn_rate=4, duration=30))
    assert steady.tick(0, never_measured) == (8, 4)
    assert steady.tick(29.9, never_measured) == (8, 4)
    assert steady.stop_reason is None
    assert steady.tick(30, never_measured) is None
    assert steady.stop_reason == "ran the full 30 s"


def test_spike_jumps_in_the_middle_fifth() -> None:
    spike = Spike(ProfileConfig(users=20, spawn_rate=2, duration=50))
    assert spike.tick(5, never_measured) == (4, 4.0)
    assert spike.tick(20, never_measured) == (20, 20.0)
    assert spike.tick(29.9, never_measured) == (20, 20.0)
    assert spike.tick(30, never_measured) == (4, 4.0)
    assert spike.tick(50, never_measured) is None
    assert spike.stop_reason == "ran the full 50 s"


def test_step_ramps_and_records_each_step() -> None:
    step = Step(ProfileConfig(users=30, spawn_rate=1, duration=60, p99_ms=100))
    assert (step.step_users, step.step_count, step.step_seconds) == (6, 5, 12.0)
    measured = iter([(50.0, 20.0), (90.0, 40.0), (120.0, 80.0), (130.0, 95.0), (131.0, 99.0)])
    assert step.tick(0, lambda: next(measured)) == (6, 6.0)
    assert step.tick(12.5, lambda: next(measured)) == (12, 6.0)
    assert step.tick(59, lambda: next(measured)) == (30, 6.0)
    assert [users for users, _, _ in step.steps] == [6, 12, 18, 24]
    assert step.tick(60, lambda: next(measured)) is None
    assert step.knee == 131.0 and not step.crossed
    assert step.stop_reason == "all 5 steps ran"


def test_step_stops_when_p99_crosses_and_reports_the_knee() -> None:
    step = Step(
        ProfileConfig(users=40, spawn_rate=10, duration=100, p99_ms=50, step_users=10, step_seconds=10)
    )
    measured = iter([(100.0, 10.0), (180.0, 30.0), (190.0, 75.0)])
    for second in range(0, 40):
        tick = step.tick(second, lambda: next(measured))
        if tick is None:
            break
    assert second == 30 and step.crossed
    assert step.steps == [(10, 100.0, 10.0), (20, 180.0, 30.0), (30, 190.0, 75.0)]
    assert step.knee == 180.0
    assert step.stop_reason == "p99 75 ms crossed the 50 ms limit at 30 users (step 3 of 4); knee 180.0 req/s"


@pytest.mark.parametrize(("duration", "seconds"), [(20, MIN_STEP_SECONDS), (200, 40.0)])
def test_steps_last_at_least_the_percentile_window(duration: float, seconds: float) -> None:
    assert Step(ProfileConfig(users=5, spawn_rate=1, duration=duration)).step_seconds == seconds
