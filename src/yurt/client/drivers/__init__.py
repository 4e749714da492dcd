"""Task drivers behind one protocol (`base.Driver`), each declaring its `base.Capabilities`.

Everything docker lives here: the driver (`docker`), the pause container that holds a docker
group's network namespace (`docker_pause`) and the detached log follower (`docker_logs`).
"""

from .base import (BaseDriver, Capabilities, Driver, DriverError, DriverFingerprint, ExitResult, TaskConfig,
                   TaskHandle, TaskStats)
from .raw_exec import RawExecDriver

__all__ = ["BaseDriver", "Capabilities", "Driver", "DriverError", "DriverFingerprint", "ExitResult",
           "RawExecDriver", "TaskConfig", "TaskHandle", "TaskStats"]
