"""Locust load shapes: steady, step (ramp until p99 crosses a limit; the knee) and spike.

`SteadyShape`, `StepShape` and `SpikeShape` are abstract so Locust does not pick one by itself;
`SelectedShape`, the only concrete shape here, runs the one named by `--shape`. Give this file to
Locust after the locustfile to drive a run by a shape:

    locust -f loadtests/locustfile.py,loadtests/shapes.py --headless --shape step --p99-ms 200 -u 40 -t 2m ...

Without it (the web UI, the Kubernetes master) users and spawn rate are set by hand. The shapes read
`--users`, `--spawn-rate` and `--run-time` plus the locustfile's `--p99-ms`, `--step-users` and
`--step-seconds`; the schedules themselves are in `loadtests/profiles.py`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from locust import LoadTestShape

from loadtests.profiles import PROFILES, Profile, ProfileConfig, Tick

log = logging.getLogger("loadtests")
PROGRESS_SECONDS = 10.0  # one progress line per this much run time (and one per step of the step shape)


class ProfileShape(LoadTestShape):
    abstract: ClassVar[bool] = True
    use_common_options = True
    profile_name: ClassVar[str] = "steady"

    def __init__(self) -> None:
        super().__init__()
        self.profile: Profile | None = None
        self.next_progress = PROGRESS_SECONDS
        self.stopped = False

    def _option(self, name: str, default: Any) -> Any:
        assert self.runner is not None
        value = getattr(self.runner.environment.parsed_options, name, None)
        return default if value is None else value

    def chosen_profile(self) -> str:
        return self.profile_name

    def config(self) -> ProfileConfig:
        users = max(1, int(self._option("num_users", 1)))
        return ProfileConfig(
            users=users,
            spawn_rate=float(self._option("spawn_rate", users)),
            duration=float(self._option("run_time", 60)),
            p99_ms=float(self._option("p99_ms", 0.0)),
            step_users=int(self._option("step_users", 0)),
            step_seconds=float(self._option("step_seconds", 0.0)),
        )

    def measure(self) -> tuple[float, float | None]:
        """The aggregated req/s and p99 of the last ~10 s."""
        assert self.runner is not None
        total = self.runner.stats.total
        try:
            p99 = total.get_current_response_time_percentile(0.99)
        except ValueError:  # a worker keeps no response-time window; the master does
            p99 = None
        return float(total.current_rps), None if p99 is None else float(p99)

    def reset_time(self) -> None:
        super().reset_time()
        self.profile = None  # a new run starts from its first step
        self.stopped = False

    def tick(self) -> Tick:
        if self.profile is None:
            name = self.chosen_profile()
            if name not in PROFILES:
                raise ValueError(f"--shape must be one of {sorted(PROFILES)}, got {name!r}")
            self.profile = PROFILES[name](self.config())
            self.next_progress = PROGRESS_SECONDS
        elapsed = self.get_run_time()
        tick = self.profile.tick(elapsed, self.measure)
        if tick is None:
            if not self.stopped:
                self.stopped = True
                log.info("stopping after %.0f s: %s", elapsed, self.profile.stop_reason or "the shape ended")
        elif elapsed >= self.next_progress:
            self.next_progress += PROGRESS_SECONDS
            rps, p99 = self.measure()
            assert self.runner is not None
            failures = self.runner.stats.total.num_failures
            shown = "-" if p99 is None else f"{p99:.0f}"
            log.info("progress %3.0f s: %d users, %.1f req/s, p99 %s ms, %d failures", elapsed, tick[0], rps, shown, failures)
        return tick


class SteadyShape(ProfileShape):
    abstract = True
    profile_name = "steady"


class StepShape(ProfileShape):
    abstract = True
    profile_name = "step"


class SpikeShape(ProfileShape):
    abstract = True
    profile_name = "spike"


class SelectedShape(ProfileShape):
    """The profile named by `--shape` (steady, step or spike)."""

    abstract = False

    def chosen_profile(self) -> str:
        return str(self._option("shape", "steady"))
