"""The node side: fingerprint, allocation runner and its hooks, task runner, drivers.

Entry points: `fingerprint_node` (what this node is), `AllocRunner` (run, update, stop,
destroy, restore an allocation), `RawExecDriver`. The server connection lives elsewhere; it
feeds allocations in and batches the runners' ``on_update`` reports back.

The names are loaded on first use: a task's executor (``python -m yurt.client.executor``)
imports this package too, and must not pay for the data model and the runners (~0.3 s of CPU
and ~20 MB per task start) when it needs only the standard library and a few modules here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .alloc_hooks import AllocDirHook, AllocHook, AllocHookContext, AllocResources, default_hooks
    from .alloc_runner import AllocRunner
    from .alloc_status import client_status
    from .allocdir import AllocDir, TaskDir
    from .drivers import (BaseDriver, Capabilities, Driver, DriverError, DriverFingerprint, ExitResult,
                          RawExecDriver, TaskConfig, TaskHandle, TaskStats)
    from .fingerprint import fingerprint_node
    from .task_runner import TaskRunner
    from .taskenv import build_task_env, clean_env_var, interpolate

_WHERE = {
    "AllocDirHook": "alloc_hooks", "AllocHook": "alloc_hooks", "AllocHookContext": "alloc_hooks",
    "AllocResources": "alloc_hooks", "default_hooks": "alloc_hooks", "AllocRunner": "alloc_runner",
    "client_status": "alloc_status", "AllocDir": "allocdir", "TaskDir": "allocdir",
    "BaseDriver": "drivers", "Capabilities": "drivers", "Driver": "drivers", "DriverError": "drivers",
    "DriverFingerprint": "drivers", "ExitResult": "drivers", "RawExecDriver": "drivers",
    "TaskConfig": "drivers", "TaskHandle": "drivers", "TaskStats": "drivers",
    "fingerprint_node": "fingerprint", "TaskRunner": "task_runner", "build_task_env": "taskenv",
    "clean_env_var": "taskenv", "interpolate": "taskenv",
}

__all__ = [
    "AllocDir", "AllocDirHook", "AllocHook", "AllocHookContext", "AllocResources", "AllocRunner",
    "BaseDriver", "Capabilities", "Driver", "DriverError", "DriverFingerprint", "ExitResult", "RawExecDriver",
    "TaskConfig", "TaskDir", "TaskHandle", "TaskRunner", "TaskStats", "build_task_env", "clean_env_var",
    "client_status", "default_hooks", "fingerprint_node", "interpolate",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
