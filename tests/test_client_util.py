"""Helpers shared by the client tests (no tests here)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from yurt.client import AllocRunner, RawExecDriver
from yurt.jobspec.defaults import canonicalize
from yurt.structs import Allocation, Job, RestartPolicy, Task, TaskGroup, TaskState
from yurt.structs.duration import MS, SECOND

DRIVERS = {"raw_exec": RawExecDriver(enabled=True)}


def sh(name: str, script: str, **kw) -> Task:
    return Task(name=name, driver="raw_exec", config={"command": "/bin/sh", "args": ["-c", script]}, **kw)


def fast_restart(attempts: int, mode: str = "fail", interval_s: float = 5.0,
                 delay_ms: int = 100) -> RestartPolicy:
    return RestartPolicy(attempts=attempts, interval=int(interval_s * SECOND), delay=delay_ms * MS,
                         mode=mode)


def make_alloc(tasks: list[Task], job_type: str = "service", **group_kw) -> Allocation:
    job = Job(id="example", type=job_type,
              task_groups=[TaskGroup(name="web", tasks=tasks, **group_kw)])
    canonicalize(job)
    return Allocation(id=str(uuid.uuid4()), name="example.web[0]", job_id="example", job=job,
                      task_group="web")


def wait_for(cond: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Recorder:
    """Collects on_update calls."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, str, dict[str, TaskState]]] = []
        self.lock = threading.Lock()

    def __call__(self, alloc_id: str, status: str, description: str,
                 states: dict[str, TaskState]) -> None:
        with self.lock:
            self.updates.append((status, description, states))

    @property
    def statuses(self) -> list[str]:
        with self.lock:
            out: list[str] = []
            for status, _, _ in self.updates:
                if not out or out[-1] != status:
                    out.append(status)
            return out

    @property
    def last(self) -> tuple[str, str, dict[str, TaskState]]:
        with self.lock:
            return self.updates[-1]


def start_alloc(alloc: Allocation, data_dir, **kw) -> tuple[AllocRunner, Recorder]:
    rec = Recorder()
    runner = AllocRunner(alloc, data_dir=data_dir, drivers=DRIVERS, on_update=rec, **kw)
    runner.run()
    return runner, rec


def event_types(state: TaskState) -> list[str]:
    return [e.type for e in state.events]


def logs(runner: AllocRunner, task: str, stream: str = "stdout", index: int = 0) -> str:
    path = runner.alloc_dir.logs / f"{task}.{stream}.{index}"
    return path.read_text() if path.exists() else ""
