"""The node side: fingerprint, allocation runner and its hooks, task runner, drivers.

Entry points: `fingerprint_node` (what this node is), `AllocRunner` (run, update, stop,
destroy, restore an allocation), `RawExecDriver`. The server connection lives elsewhere; it
feeds allocations in and batches the runners' ``on_update`` reports back.
"""

from .alloc_hooks import AllocDirHook, AllocHook, AllocHookContext, AllocResources, default_hooks
from .alloc_runner import AllocRunner
from .alloc_status import client_status
from .allocdir import AllocDir, TaskDir
from .drivers import (BaseDriver, Capabilities, Driver, DriverError, DriverFingerprint, ExitResult,
                      RawExecDriver, TaskConfig, TaskHandle, TaskStats)
from .fingerprint import fingerprint_node
from .task_runner import TaskRunner
from .taskenv import build_task_env, clean_env_var, interpolate

__all__ = [
    "AllocDir", "AllocDirHook", "AllocHook", "AllocHookContext", "AllocResources", "AllocRunner",
    "BaseDriver", "Capabilities", "Driver", "DriverError", "DriverFingerprint", "ExitResult", "RawExecDriver",
    "TaskConfig", "TaskDir", "TaskHandle", "TaskRunner", "TaskStats", "build_task_env", "clean_env_var",
    "client_status", "default_hooks", "fingerprint_node", "interpolate",
]
