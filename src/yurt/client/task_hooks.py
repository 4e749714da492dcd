"""Task runner hooks: one class per concern of running one task, as Nomad's taskrunner hooks.

The task runner calls, in list order: ``prestart`` before every start of the task (the first,
and each restart; it may block, and returns once the task may start, or raises `TaskHookError`
to fail the task), ``poststart`` once the driver started it, ``exited`` when its process ended
(before the restart policy decides), ``update`` when the allocation changes, and ``stop`` once
the task is dead for good. Every call gets the task's `TaskHookContext`: what the hook may read
(the allocation, the task, its directory, its environment) and do (restart or signal the task,
emit a task event, add environment variables for the next start).

The template hook (client/template_hook.py) is the first user. ``TaskHookFactory`` makes a
task's hooks (None: the task needs none); the node agent gives the allocation runner its list.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from yurt.structs import Allocation, Node, Task, TaskEvent

from .allocdir import TaskDir

if TYPE_CHECKING:
    from .task_runner import TaskRunner


class TaskHookError(Exception):
    """A hook cannot let the task start: the message becomes the task's event; the task fails."""


@dataclass
class TaskHookContext:
    """One task, as its hooks see it (the runner only through these)."""

    runner: TaskRunner
    env: dict[str, str] = field(default_factory=dict)   # hooks' variables, added at each start

    @property
    def alloc(self) -> Allocation:
        return self.runner.alloc

    @property
    def task(self) -> Task:
        return self.runner.task

    @property
    def node(self) -> Node | None:
        return self.runner.node

    @property
    def task_dir(self) -> TaskDir:
        return self.runner.task_dir

    @property
    def killed(self) -> threading.Event:
        """Set once the task is asked to stop: a blocking prestart returns early then."""
        return self.runner.kill_event

    def task_env(self) -> dict[str, str]:
        """The environment the task starts with, without what hooks add (``{{ env "X" }}``)."""
        return self.runner.base_env()

    def emit(self, event: TaskEvent) -> None:
        self.runner.emit_event(event)

    def restart(self, reason: str) -> bool:
        return self.runner.restart(reason)

    def signal(self, signal: str, reason: str) -> None:
        self.runner.send_signal(signal, reason)

    def running(self) -> bool:
        return self.runner.is_running()


class TaskHook:
    """The hook protocol; every call is a no-op unless the hook overrides it."""

    name = "task-hook"

    def prestart(self, ctx: TaskHookContext) -> None:
        pass

    def poststart(self, ctx: TaskHookContext) -> None:
        pass

    def exited(self, ctx: TaskHookContext) -> None:
        pass

    def update(self, ctx: TaskHookContext) -> None:
        pass

    def stop(self, ctx: TaskHookContext) -> None:
        pass


TaskHookFactory = Callable[[Task], "TaskHook | None"]
