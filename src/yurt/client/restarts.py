"""Nomad's restart tracker: whether a task that ended (or failed to start) runs again, and when."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from yurt.structs import RestartPolicy, TaskLifecycle
from yurt.structs.duration import SECOND, format_duration

from .drivers.base import ExitResult

RESTARTING = "Restarting"
NOT_RESTARTING = "Not Restarting"
TERMINATED = "Terminated"

JITTER = 0.25
REASON_NO_RESTARTS = "Policy allows no restarts"
REASON_UNRECOVERABLE = "Error was unrecoverable"
REASON_WITHIN_POLICY = "Restart within policy"
REASON_DELAY = "Exceeded allowed attempts, applying a delay"
REASON_SUCCESS = "Restart unnecessary as task terminated successfully"


def restarts_on_success(job_type: str, lifecycle: TaskLifecycle | None) -> bool:
    """Service tasks run again after exiting 0; batch tasks and non-sidecar hooks do not."""
    on_success = job_type not in ("batch", "sysbatch")
    if lifecycle is not None and lifecycle.hook in ("prestart", "poststart"):
        on_success = lifecycle.sidecar
    if lifecycle is not None and lifecycle.hook == "poststop":
        on_success = False
    return on_success


@dataclass
class Decision:
    state: str  # RESTARTING, NOT_RESTARTING or TERMINATED
    delay: float = 0.0  # seconds
    reason: str = ""


class RestartTracker:
    def __init__(self, policy: RestartPolicy, job_type: str, lifecycle: TaskLifecycle | None = None,
                 rng: random.Random | None = None, clock=time.monotonic) -> None:
        self.attempts = policy.attempts if policy.attempts is not None else 2
        self.interval = policy.interval if policy.interval is not None else 30 * 60 * SECOND
        self.delay = policy.delay if policy.delay is not None else 15 * SECOND
        self.mode = policy.mode or "fail"
        self.on_success = restarts_on_success(job_type, lifecycle)
        self.rng = rng or random.Random()
        self.clock = clock
        self.count = 0
        self.start = clock()

    def _exceeded(self) -> Decision:
        if self.mode == "fail":
            return Decision(NOT_RESTARTING, 0.0,
                            f'Exceeded allowed attempts {self.attempts} in interval '
                            f'{format_duration(self.interval)} and mode is "fail"')
        remaining = self.start + self.interval / SECOND - self.clock()
        return Decision(RESTARTING, max(0.0, remaining), REASON_DELAY)

    def _jitter(self) -> float:
        d = max(self.delay, 1)
        return (d + int(self.rng.randrange(d) * JITTER)) / SECOND

    def next(self, exit: ExitResult | None = None, start_error: Exception | None = None,
             recoverable: bool = True) -> Decision:
        """Decide after a task exited (``exit``) or failed to start (``start_error``)."""
        success = exit is not None and start_error is None and exit.successful()
        if self.attempts == 0:
            if success and not self.on_success:
                return Decision(TERMINATED, 0.0, REASON_SUCCESS)
            return Decision(NOT_RESTARTING, 0.0, REASON_NO_RESTARTS)
        now = self.clock()
        if now > self.start + self.interval / SECOND:
            self.count = 0
            self.start = now
        self.count += 1
        if start_error is not None and not recoverable:
            return Decision(NOT_RESTARTING, 0.0, REASON_UNRECOVERABLE)
        if success and not self.on_success:
            return Decision(TERMINATED, 0.0, REASON_SUCCESS)
        if self.count > self.attempts:
            return self._exceeded()
        return Decision(RESTARTING, self._jitter(), REASON_WITHIN_POLICY)
