"""The three load profiles as plain schedules: elapsed seconds (and the current p99) -> users.

`loadtests/shapes.py` wraps them in Locust `LoadTestShape`s. They live apart because importing
Locust monkey-patches the whole process with gevent; these can be tested (and reasoned about)
without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MIN_STEP_SECONDS = 10.0  # Locust's current p99 covers the last 10 s: a shorter step would blur
# () -> (req/s, p99 ms or None) over the last seconds, as Locust's stats report them.
Measure = Callable[[], tuple[float, float | None]]
Tick = tuple[int, float] | None  # (users, spawn rate) or None to stop


@dataclass(frozen=True)
class ProfileConfig:
    users: int  # steady level; peak for step and spike
    spawn_rate: float  # users started per second
    duration: float  # seconds
    p99_ms: float = 0.0  # step: stop once the current p99 is over this (0: never)
    step_users: int = 0  # step: users added per step (0: users / 5)
    step_seconds: float = 0.0  # step: seconds per step (0: duration / steps, at least MIN_STEP_SECONDS)


@dataclass
class Steady:
    """`users` users for the whole run."""

    config: ProfileConfig

    stop_reason: str | None = None

    def tick(self, elapsed: float, measure: Measure) -> Tick:
        if elapsed >= self.config.duration:
            self.stop_reason = f"ran the full {self.config.duration:g} s"
            return None
        return self.config.users, self.config.spawn_rate


@dataclass
class Step:
    """Add `step_users` every `step_seconds` up to `users`; stop once the current p99 crosses the limit.

    At the end of each step its req/s and current p99 are recorded; `knee` is the highest req/s of
    the steps whose p99 stayed under the limit before it was crossed.
    """

    config: ProfileConfig
    steps: list[tuple[int, float, float | None]] = field(default_factory=list)  # (users, req/s, p99 ms)
    crossed: bool = False
    stop_reason: str | None = None

    @property
    def step_users(self) -> int:
        return max(1, self.config.step_users or math.ceil(self.config.users / 5))

    @property
    def step_count(self) -> int:
        return math.ceil(self.config.users / self.step_users)

    @property
    def step_seconds(self) -> float:
        return max(MIN_STEP_SECONDS, self.config.step_seconds or self.config.duration / self.step_count)

    @property
    def knee(self) -> float | None:
        limit = self.config.p99_ms
        under = [rps for _, rps, p99 in self.steps if p99 is not None and (not limit or p99 <= limit)]
        return max(under) if under else None

    def users_at(self, step: int) -> int:
        return min(self.config.users, self.step_users * (step + 1))

    def tick(self, elapsed: float, measure: Measure) -> Tick:
        step = int(elapsed // self.step_seconds)  # 0-based index of the running step
        while len(self.steps) < step and not self.crossed:
            self._finish_step(measure)
        if self.crossed or elapsed >= self.config.duration or step >= self.step_count:
            if self.stop_reason is None and not self.crossed:
                self.stop_reason = (
                    f"all {self.step_count} steps ran" if step >= self.step_count else f"ran the full {self.config.duration:g} s"
                )
            return None
        return self.users_at(step), max(self.config.spawn_rate, float(self.step_users))

    def _finish_step(self, measure: Measure) -> None:
        rps, p99 = measure()
        users = self.users_at(len(self.steps))
        self.steps.append((users, rps, p99))
        log.info("step %d: %d users, %.1f req/s, current p99 %s ms", len(self.steps), users, rps, p99)
        limit = self.config.p99_ms
        if limit and p99 is not None and p99 > limit:
            self.crossed = True
            knee = f"{self.knee:.1f} req/s" if self.knee is not None else "below the first step"
            log.info("p99 %.0f ms crossed the %.0f ms limit at %d users; knee %s", p99, limit, users, knee)
            self.stop_reason = (
                f"p99 {p99:.0f} ms crossed the {limit:g} ms limit at {users} users "
                f"(step {len(self.steps)} of {self.step_count}); knee {knee}"
            )


@dataclass
class Spike:
    """A fifth of `users` as the baseline; all of them at once for the middle fifth of the run."""

    config: ProfileConfig

    @property
    def baseline(self) -> int:
        return max(1, self.config.users // 5)

    stop_reason: str | None = None

    def tick(self, elapsed: float, measure: Measure) -> Tick:
        duration = self.config.duration
        if elapsed >= duration:
            self.stop_reason = f"ran the full {duration:g} s"
            return None
        if 0.4 * duration <= elapsed < 0.6 * duration:
            return self.config.users, float(self.config.users)  # everyone within a second
        return self.baseline, max(self.config.spawn_rate, float(self.baseline))


Profile = Steady | Step | Spike
PROFILES: dict[str, type[Steady] | type[Step] | type[Spike]] = {
    "steady": Steady,
    "step": Step,
    "spike": Spike,
}
