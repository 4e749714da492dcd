"""Rescheduling failed allocations (Nomad structs/alloc.go RescheduleEligible, NextDelay)."""

from __future__ import annotations

from typing import TypeGuard

from yurt.structs import Allocation, RescheduleEvent, ReschedulePolicy, RescheduleTracker

from .util import last_event_time

RESCHEDULE_WINDOW_NS = 1_000_000_000        # due within a second counts as "now"
FOLLOWUP_BATCH_NS = 5_000_000_000           # failures this close share one follow-up eval
MAX_PAST_EVENTS = 5                         # kept for unlimited policies


def _enabled(policy: ReschedulePolicy | None) -> TypeGuard[ReschedulePolicy]:
    return policy is not None and ((policy.attempts or 0) > 0 or bool(policy.unlimited))


def _events(alloc: Allocation) -> list[RescheduleEvent]:
    return alloc.reschedule_tracker.events if alloc.reschedule_tracker else []


def eligible(alloc: Allocation, policy: ReschedulePolicy | None, fail_time: int) -> bool:
    """Whether the policy allows one more attempt for this allocation."""
    if not _enabled(policy):
        return False
    if policy.unlimited:
        return True
    interval = policy.interval or 0
    attempted = sum(1 for e in _events(alloc) if fail_time - e.reschedule_time < interval)
    return attempted < (policy.attempts or 0)


def next_delay(alloc: Allocation, policy: ReschedulePolicy) -> int:
    """How long to wait before the next attempt, following the delay function."""
    delay = policy.delay or 0
    events = _events(alloc)
    if not events:
        return delay
    fn = policy.delay_function or "constant"
    if fn == "exponential":
        delay = events[-1].delay * 2
    elif fn == "fibonacci":
        if len(events) >= 2:
            n1, n2 = events[-1].delay, events[-2].delay
            delay = n1 if (n2 == policy.max_delay and n1 == policy.delay) else n1 + n2
    else:
        return delay
    max_delay = policy.max_delay or 0
    if max_delay > 0 and delay > max_delay:
        delay = max_delay
        # a long quiet spell since the last attempt starts the series again
        if last_event_time(alloc) - events[-1].reschedule_time > delay:
            delay = policy.delay or 0
    return delay


def next_reschedule_time(alloc: Allocation, policy: ReschedulePolicy | None) -> tuple[int, bool]:
    """(when, allowed) for the next attempt."""
    fail_time = last_event_time(alloc)
    if policy is None or not eligible(alloc, policy, fail_time):
        return 0, False
    return fail_time + next_delay(alloc, policy), True


def new_tracker(prev: Allocation, policy: ReschedulePolicy, now_ns: int) -> RescheduleTracker:
    """The tracker of a replacement: the previous events still in the interval, plus this one."""
    events = list(_events(prev))
    if policy.unlimited:
        events = events[-MAX_PAST_EVENTS:]
    else:
        interval = policy.interval or 0
        events = [e for e in events if now_ns - e.reschedule_time < interval]
    events.append(RescheduleEvent.model_construct(
        reschedule_time=now_ns, prev_alloc_id=prev.id, prev_node_id=prev.node_id,
        delay=next_delay(prev, policy)))
    return RescheduleTracker.model_construct(events=events)


def penalty_nodes(prev: Allocation) -> set[str]:
    """Nodes where this allocation, or those it replaced, failed."""
    out = {prev.node_id}
    out.update(e.prev_node_id for e in _events(prev))
    return out
