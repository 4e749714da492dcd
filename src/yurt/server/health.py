"""Whether an allocation is healthy, decided on the server from what clients report (Nomad's
client/allochealth tracker): the drainer uses it with a group's `migrate` block, the deployment
watcher with its `update` block.

Healthy: every required task (main tasks and sidecars; prestart/poststart helpers and poststop
tasks do not count) running for `min_healthy_time` since the latest start and, with
`health_check = "checks"`, every check of the allocation passing for as long (as the server saw
them). Unhealthy: a task failed or a required one is dead, the allocation failed, or
`healthy_deadline` passed (from the allocation's creation) without being healthy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from yurt.structs import Allocation, ServiceRegistration, TaskGroup
from yurt.structs.alloc import ALLOC_FAILED, ALLOC_RUNNING, TASK_DEAD, TASK_RUNNING
from yurt.structs.catalog import CHECK_PASSING, CHECK_WARNING, HealthCheck
from yurt.structs.times import parse_rfc3339
from yurt.state import Snapshot


class HealthJudge:
    """Remembers since when each allocation's checks have been passing."""

    def __init__(self, checks_of: Callable[[ServiceRegistration], Iterable[HealthCheck]]) -> None:
        self._checks_of = checks_of             # the catalog's checks of a registration
        self._passing_since: dict[str, int] = {}

    def forget_all(self) -> None:
        self._passing_since.clear()

    def keep_only(self, alloc_ids: set[str]) -> None:
        """Forget the allocations no longer looked at."""
        for alloc_id in [a for a in self._passing_since if a not in alloc_ids]:
            del self._passing_since[alloc_id]

    def health(self, snap: Snapshot, a: Allocation, tg: TaskGroup, *, health_check: str,
               min_healthy_time: int, healthy_deadline: int, now: int) -> bool | None:
        """True (healthy), False (unhealthy) or None (not decided yet). The clock starts when
        the allocation was created, or when it joined a deployment as it was (an update in
        place records that time in its undecided DeploymentStatus)."""
        start = a.create_time
        if a.deployment_status is not None and a.deployment_status.healthy is None:
            start = max(start, parse_rfc3339(a.deployment_status.timestamp) or 0)
        deadline_passed = now >= start + healthy_deadline
        if a.client_status == ALLOC_FAILED:
            return False
        latest_start = 0
        for task in tg.tasks or []:
            lifecycle = task.lifecycle
            required = lifecycle is None or not lifecycle.hook or lifecycle.sidecar
            state = a.task_states.get(task.name)
            if state is not None and state.failed:
                return False
            if not required:
                continue        # prestart/poststart helpers and poststop tasks do not count
            if state is None or state.state != TASK_RUNNING:
                if state is not None and state.state == TASK_DEAD:
                    return False
                return False if deadline_passed else None
            latest_start = max(latest_start, parse_rfc3339(state.started_at) or now)
        if a.client_status != ALLOC_RUNNING:
            return False if deadline_passed else None
        since = max(latest_start, start)
        if health_check == "checks":
            if not self._checks_pass(snap, a, tg):
                self._passing_since.pop(a.id, None)
                return False if deadline_passed else None
            since = max(since, self._passing_since.setdefault(a.id, now))
        if now - since >= min_healthy_time:
            return True
        return False if deadline_passed else None

    def why(self, snap: Snapshot, a: Allocation, tg: TaskGroup) -> str:
        """What keeps the allocation from being healthy, for a person: the task that failed or
        kept exiting, or the check that does not pass (with its output)."""
        if a.client_status == ALLOC_FAILED and a.client_description:
            reason = a.client_description
        else:
            reason = ""
        for task in tg.tasks or []:
            state = a.task_states.get(task.name)
            if state is None:
                continue
            last = next((e for e in reversed(state.events) if e.type in ("Terminated", "Driver Failure",
                                                                           "Not Restarting", "Killed")), None)
            detail = (last.display_message or last.message) if last is not None else ""
            if state.failed or state.state == TASK_DEAD:
                what = "failed" if state.failed else "exited"
                return f'task "{task.name}" {what}' + (f": {detail}" if detail else "")
            if state.restarts:
                return (f'task "{task.name}" kept exiting ({state.restarts} restart'
                        f'{"s" if state.restarts != 1 else ""})' + (f": {detail}" if detail else ""))
        for reg in snap.services_by_alloc(a.id):
            for c in self._checks_of(reg):
                if c.status != CHECK_PASSING:
                    out = (c.output or "").strip().splitlines()
                    return f'check "{c.name}" of service "{reg.service}" is {c.status}' + (f": {out[0]}" if out else "")
        for svc in tg.services or []:
            for check in svc.checks or []:
                name = check.name or f'service: "{svc.name}" check'
                if not any(c.name == name for reg in snap.services_by_alloc(a.id) for c in self._checks_of(reg)):
                    return f'check "{name}" of service "{svc.name}" is not registered'
        return reason or "its tasks did not run for min_healthy_time in time"

    def _checks_pass(self, snap: Snapshot, a: Allocation, tg: TaskGroup) -> bool:
        """Every check registered for the allocation passes, and every check its group declares
        is registered. A check with on_update "ignore" does not count; with "ignore_warnings" a
        warning passes."""
        registered: dict[tuple[str, str], HealthCheck] = {}
        for reg in snap.services_by_alloc(a.id):
            for c in self._checks_of(reg):
                registered[(reg.service, c.name)] = c
        policy: dict[tuple[str, str], str] = {}
        for svc in tg.services or []:
            for check in svc.checks or []:
                key = (svc.name, check.name or f'service: "{svc.name}" check')
                policy[key] = check.on_update or svc.on_update or "require_healthy"
                if key not in registered and policy[key] != "ignore":
                    return False
        for key, c in registered.items():
            rule = policy.get(key, "require_healthy")
            if rule == "ignore" or c.status == CHECK_PASSING:
                continue
            if rule == "ignore_warnings" and c.status == CHECK_WARNING:
                continue
            return False
        return True
