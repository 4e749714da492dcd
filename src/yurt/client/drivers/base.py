"""The protocol every task driver implements, and the values it trades in.

A driver starts a task from a `TaskConfig` and returns a `TaskHandle`: a small, JSON-serializable
record that is enough to find the task again after the agent restarts (`recover`). `wait`
returns an `ExitResult` when the task has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable


class DriverError(Exception):
    """A task could not be started, recovered or stopped; the message is for the user."""

    def __init__(self, message: str, recoverable: bool = True) -> None:
        super().__init__(message)
        self.recoverable = recoverable


FsIsolation = Literal["none", "chroot", "image"]

# holder(alloc_id, hostname, dns) -> record: creates the group's network namespace at
# /var/run/netns/<alloc id>, held by something else than `ip netns add` (docker's pause container).
# The record is kept in the network state; `network.alloc_network` checks and releases it.
NetnsHolder = Callable[[str, str, dict[str, Any] | None], dict[str, Any]]


@dataclass(frozen=True)
class Capabilities:
    """What a driver does, declared on the driver (``capabilities``) and read by the client,
    which never probes a driver for optional attributes.

    ``fs_isolation``: the filesystem a task sees: the host's (``none``), a chroot of its task
    dir (``chroot``: the environment names /alloc, /local, /secrets), or an image's (``image``).
    ``holds_network_namespace``: the driver creates the namespace of a group that runs its tasks
    (`Driver.netns_holder`), as the docker driver does with a pause container; the network hook
    uses it instead of ``ip netns add``. ``removes_orphans``: at client start the driver removes
    what it runs for allocations the client no longer has (`Driver.remove_orphans`).
    ``drains``: the task can be told to stop taking new work while it finishes what it has
    (`Driver.drain`, `Driver.drained`): a Connect sidecar refuses new inbound connections and
    lets the open ones finish before its application is stopped.
    ``interruptible_wait``: `Driver.interrupt` wakes a `Driver.wait` in progress, so the task's
    follower waits in long slices instead of waking five times a second to look for a kill (a
    node at rest with hundreds of tasks then costs its agent little).
    """

    fs_isolation: FsIsolation = "none"
    holds_network_namespace: bool = False
    removes_orphans: bool = False
    drains: bool = False
    interruptible_wait: bool = False


@dataclass
class DriverFingerprint:
    """What a driver reports about this node (becomes a node's `Drivers[name]`)."""

    detected: bool = False
    healthy: bool = False
    description: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """Everything a driver needs to start one task (values already interpolated)."""

    alloc_id: str
    name: str
    env: dict[str, str]
    config: dict[str, Any]
    task_dir: Path  # <alloc>/<task>
    local_dir: Path  # <alloc>/<task>/local, the working directory
    alloc_dir: Path  # <alloc>/alloc, the shared directory
    logs_dir: Path
    user: str = ""
    max_files: int = 10
    max_file_size_mb: int = 10
    logs_disabled: bool = False
    # tests and operators may bound log files in bytes directly; overrides max_file_size_mb
    max_file_size_bytes: int | None = None
    # the allocation's network namespace (/var/run/netns/<alloc id>); "" = the host's network
    netns: str = ""
    # resources, for drivers that enforce them (exec: cgroups); 0 = no limit
    cpu_shares: int = 0  # MHz, Nomad's CpuShares
    memory_mb: int = 0
    memory_max_mb: int = 0  # 0 = none, -1 = unlimited (memory_mb is then a soft limit)
    # from the network hook, for drivers with their own /etc and UTS namespace ("" = not set)
    resolv_conf: str = ""  # the text of /etc/resolv.conf
    hostname: str = ""
    # seconds the task has between its kill signal and SIGKILL (the task's kill_timeout, capped)
    kill_timeout: float = 5.0
    # the task's volume_mounts of host volumes: (host path, destination, read-only)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.alloc_id}/{self.name}"


@dataclass
class TaskHandle:
    """A started task, as persisted by the client to re-attach after a restart."""

    driver: str
    alloc_id: str
    task: str
    pid: int = 0  # the task's process (also its process group)
    pid_start: int | None = None  # /proc start time, to tell a reused pid apart
    executor_pid: int = 0
    executor_start: int | None = None
    started_at: int = 0  # unix nanoseconds
    task_dir: str = ""
    state: dict[str, Any] = field(default_factory=dict)  # driver-specific

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskHandle:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class ExitResult:
    exit_code: int = 0
    signal: int = 0
    oom_killed: bool = False
    err: str = ""

    def successful(self) -> bool:
        return self.exit_code == 0 and self.signal == 0 and not self.err


@dataclass
class TaskStats:
    cpu_user_seconds: float = 0.0
    cpu_system_seconds: float = 0.0
    rss_bytes: int = 0
    pids: list[int] = field(default_factory=list)


@runtime_checkable
class Driver(Protocol):
    name: str
    capabilities: Capabilities

    def fingerprint(self) -> DriverFingerprint: ...

    def start(self, cfg: TaskConfig) -> TaskHandle:
        """Start the task; raises DriverError with a user-facing message."""

    def wait(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        """The exit result once the task ended; None when still running after ``timeout``."""

    def stop(self, handle: TaskHandle, signal: str, timeout: float) -> None:
        """Send ``signal``; after ``timeout`` seconds SIGKILL. Returns when the task is gone."""

    def signal(self, handle: TaskHandle, signal: str) -> None: ...

    def destroy(self, handle: TaskHandle) -> None:
        """Release everything the task holds (kills it if still running)."""

    def recover(self, handle: TaskHandle) -> None:
        """Re-attach to a task started by an earlier agent; DriverError if it is gone."""

    def stats(self, handle: TaskHandle) -> TaskStats: ...

    def netns_holder(self, alloc_id: str, hostname: str = "", dns: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the namespace of ``alloc_id``'s group (``capabilities.holds_network_namespace``)."""

    def remove_orphans(self, keep_alloc_ids: set[str]) -> list[str]:
        """Remove what runs for allocations not in ``keep_alloc_ids`` (``capabilities.removes_orphans``);
        what was removed, for the log."""

    def drain(self, handle: TaskHandle) -> bool:
        """Tell the task to take no new work and finish what it has (``capabilities.drains``);
        False when there is nothing to wait for."""

    def drained(self, handle: TaskHandle) -> bool:
        """True once a drained task has finished what it had (or is gone)."""

    def interrupt(self, handle: TaskHandle) -> None:
        """Make a `wait` in progress on ``handle`` (or the next one) return None early
        (``capabilities.interruptible_wait``); `stop` is never cut short by it."""


class BaseDriver:
    """What a driver without a capability does: the defaults of the optional parts of `Driver`."""

    name = "driver"
    capabilities = Capabilities()

    def netns_holder(self, alloc_id: str, hostname: str = "", dns: dict[str, Any] | None = None) -> dict[str, Any]:
        raise DriverError(f'driver "{self.name}" does not hold network namespaces')

    def remove_orphans(self, keep_alloc_ids: set[str]) -> list[str]:
        return []

    def drain(self, handle: TaskHandle) -> bool:
        return False

    def drained(self, handle: TaskHandle) -> bool:
        return True

    def interrupt(self, handle: TaskHandle) -> None:
        return None


def process_stats(pid: int) -> TaskStats:
    """CPU seconds and RSS of one process, from /proc (zeros when it is gone)."""
    import os
    stats = TaskStats(pids=[pid])
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        stats.cpu_user_seconds = int(rest[11]) / ticks
        stats.cpu_system_seconds = int(rest[12]) / ticks
        with open(f"/proc/{pid}/statm") as f:
            stats.rss_bytes = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        pass
    return stats
