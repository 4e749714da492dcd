"""An allocation's client status, derived from its tasks' states (Nomad's getClientStatus)."""

from __future__ import annotations

from collections.abc import Iterable

from yurt.structs import TaskState
from yurt.structs.alloc import (ALLOC_COMPLETE, ALLOC_FAILED, ALLOC_PENDING, ALLOC_RUNNING,
                                TASK_DEAD, TASK_PENDING, TASK_RUNNING)


def client_status(states: Iterable[TaskState], finished: bool = True) -> tuple[str, str]:
    """(status, description): failed wins, then pending, then running, then complete.

    ``states`` are the tasks that count now (helpers waiting for their turn do not). While the
    runner is not ``finished`` (poststop tasks to come), all-dead reads as running.
    """
    pending = running = dead = failed = False
    for s in states:
        if s.state == TASK_RUNNING:
            running = True
        elif s.state == TASK_PENDING:
            pending = True
        elif s.state == TASK_DEAD:
            if s.failed:
                failed = True
            else:
                dead = True
    if failed:
        return ALLOC_FAILED, "Failed tasks"
    if pending:
        return ALLOC_PENDING, "No tasks have started"
    if running:
        return ALLOC_RUNNING, "Tasks are running"
    if dead:
        if finished:
            return ALLOC_COMPLETE, "All tasks have completed"
        return ALLOC_RUNNING, "Tasks are running"
    return ALLOC_PENDING, "No tasks have started"
