"""The client's local state of one allocation: ``<data_dir>/client/state/<alloc_id>.json``.

Enough to re-attach after an agent restart: the allocation as received, and per task its
state and driver handle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from yurt.structs import Allocation, TaskState

from .drivers.base import TaskHandle
from .procs import read_json, write_json_atomic


def state_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "client" / "state"


def state_path(data_dir: str | os.PathLike, alloc_id: str) -> Path:
    return state_dir(data_dir) / f"{alloc_id}.json"


@dataclass
class PersistedTask:
    state: TaskState
    handle: TaskHandle | None = None


@dataclass
class PersistedAlloc:
    alloc: Allocation
    tasks: dict[str, PersistedTask] = field(default_factory=dict)
    done: bool = False

    def to_json(self) -> dict:
        return {
            "alloc": self.alloc.to_json(),
            "tasks": {name: {"state": t.state.to_json(),
                             "handle": t.handle.to_dict() if t.handle else None}
                      for name, t in self.tasks.items()},
            "done": self.done,
        }

    @classmethod
    def from_json(cls, data: dict) -> PersistedAlloc:
        tasks = {name: PersistedTask(TaskState.model_validate(t["state"]),
                                     TaskHandle.from_dict(t["handle"]) if t.get("handle") else None)
                 for name, t in (data.get("tasks") or {}).items()}
        return cls(Allocation.model_validate(data["alloc"]), tasks, bool(data.get("done")))


def save(data_dir: str | os.PathLike, persisted: PersistedAlloc) -> None:
    path = state_path(data_dir, persisted.alloc.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, persisted.to_json())


def load(data_dir: str | os.PathLike, alloc_id: str) -> PersistedAlloc | None:
    data = read_json(state_path(data_dir, alloc_id))
    return PersistedAlloc.from_json(data) if data else None


def delete(data_dir: str | os.PathLike, alloc_id: str) -> None:
    state_path(data_dir, alloc_id).unlink(missing_ok=True)


def persisted_alloc_ids(data_dir: str | os.PathLike) -> list[str]:
    d = state_dir(data_dir)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json"))
