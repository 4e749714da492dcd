"""Task drivers behind one protocol (`base.Driver`)."""

from .base import (Driver, DriverError, DriverFingerprint, ExitResult, TaskConfig, TaskHandle,
                   TaskStats)
from .raw_exec import RawExecDriver

__all__ = ["Driver", "DriverError", "DriverFingerprint", "ExitResult", "RawExecDriver",
           "TaskConfig", "TaskHandle", "TaskStats"]
