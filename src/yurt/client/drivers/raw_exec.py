"""raw_exec: runs a host command without isolation, under a detached executor process.

The executor (`yurt.client.executor`) is started in its own session, so the task keeps running
when the agent stops or crashes; the files it writes in the task directory (pid file, status
file) are how an agent, old or new, follows the task.

At most one executor runs a task directory: the agent takes an exclusive lock on
`.executor.lock` before it starts one and hands the locked file to it, which holds it for
life. An agent that finds the lock taken (it crashed after starting the executor, before it
could record the handle) adopts the executor that runs there instead of starting a second one.

Once the task runs, the executor execv's the compiled supervisor (`client/supervise.c`, ~1 MB)
when the driver's `Supervisor` has one, else it supervises the task itself in Python.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal as _signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..supervise import Supervisor, default_supervisor
from ..procs import is_alive, kill_group, read_json, signal_number, write_json_atomic
from .base import (BaseDriver, Capabilities, DriverError, DriverFingerprint, ExitResult, TaskConfig, TaskHandle,
                   TaskStats, process_stats)

NAME = "raw_exec"
SPEC_FILE = ".executor-spec.json"
PID_FILE = ".executor-pid.json"
STATUS_FILE = ".executor-status.json"
EXECUTOR_LOG = ".executor.log"
LOCK_FILE = ".executor.lock"
START_TIMEOUT = 30.0
POLL = 0.05
IDLE_CHECK = 1.0   # seconds: the longest a follower sleeps without looking at the status file
RETIRE_AFTER = 120.0   # seconds a finished task's waker stays open for threads still waiting on it
KILL_GRACE = 10.0
MB = 1024 * 1024
_YURT_SRC = str(Path(__file__).resolve().parents[3])


def lookup_command(command: str, task_dir: Path, env: dict[str, str]) -> str:
    """Where ``command`` is: the task's local/ dir, the task dir, then $PATH (Nomad lookupBin)."""
    def runnable(p: Path) -> bool:
        return p.is_file() and os.access(p, os.X_OK)

    if os.path.isabs(command):
        if runnable(Path(command)):
            return command
        raise DriverError(f'failed to start: exec: "{command}": no such executable file')
    for base in (task_dir / "local", task_dir):
        candidate = base / command
        if runnable(candidate):
            return str(candidate)
    if "/" not in command:
        path = env.get("PATH") or os.environ.get("PATH") or os.defpath
        for d in path.split(os.pathsep):
            candidate = Path(d or ".") / command
            if runnable(candidate):
                return str(candidate)
    raise DriverError(f'failed to start: exec: "{command}": executable file not found in $PATH')


def claim_task_dir(task_dir: Path) -> int | None:
    """The fd of `task_dir`'s executor lock, taken; None when a live executor holds it."""
    fd = os.open(task_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def executor_running(task_dir: Path) -> bool:
    fd = claim_task_dir(task_dir)
    if fd is None:
        return True
    os.close(fd)
    return False


class RawExecDriver(BaseDriver):
    """The `raw_exec` driver; ``enabled`` comes from the client config (on in dev mode)."""

    name = NAME
    capabilities = Capabilities(interruptible_wait=True)
    # what a previous run left in the task dir, removed (under the lock) before a fresh start
    stale_files: tuple[str, ...] = (PID_FILE, STATUS_FILE)

    def __init__(self, enabled: bool = True, supervisor: Supervisor | None = None) -> None:
        self.enabled = enabled
        # the compiled supervisor (built on first use); the agent's lives in its data dir
        self.supervisor = supervisor if supervisor is not None else default_supervisor()
        self._children: dict[int, subprocess.Popen] = {}  # executors this agent started
        self._lock = threading.Lock()
        self._wakers: dict[int, int] = {}   # executor pid -> the eventfd `interrupt` writes
        self._retired: list[tuple[float, int]] = []   # (when, eventfd) of finished tasks, closed later

    # --- fingerprint ------------------------------------------------------------------------

    def fingerprint(self) -> DriverFingerprint:
        if not self.enabled:
            return DriverFingerprint(detected=False, healthy=False, description="disabled")
        return DriverFingerprint(detected=True, healthy=True, description="Healthy",
                                 attributes={"driver.raw_exec": "1"})

    # --- start ------------------------------------------------------------------------------

    def start(self, cfg: TaskConfig) -> TaskHandle:
        if not self.enabled:
            raise DriverError("raw_exec is disabled on this client", recoverable=False)
        command = (cfg.config or {}).get("command")
        if not command or not isinstance(command, str):
            raise DriverError('failed to start: missing required "command" in the task\'s config',
                              recoverable=False)
        args = (cfg.config or {}).get("args") or []
        if not isinstance(args, list):
            raise DriverError('failed to start: "args" must be a list of strings', recoverable=False)
        path = lookup_command(command, cfg.task_dir, cfg.env)

        task_dir = Path(cfg.task_dir)
        task_dir.mkdir(parents=True, exist_ok=True)
        link_mounts(task_dir, cfg.mounts)
        claimed = self.claim(task_dir, cfg)
        if isinstance(claimed, TaskHandle):
            return claimed
        lock_fd = claimed
        try:
            return self._start_executor(task_dir, lock_fd, cfg, path, args)
        finally:
            os.close(lock_fd)

    def _start_executor(self, task_dir: Path, lock_fd: int, cfg: TaskConfig, path: str,
                        args: list) -> TaskHandle:
        for name in self.stale_files:
            (task_dir / name).unlink(missing_ok=True)
        size = cfg.max_file_size_bytes or cfg.max_file_size_mb * MB
        spec = {
            "command": path, "args": [str(a) for a in args], "env": cfg.env,
            "cwd": str(cfg.local_dir), "user": cfg.user, "task": cfg.name,
            "logs_dir": str(cfg.logs_dir), "logs_disabled": cfg.logs_disabled,
            "max_files": cfg.max_files, "max_file_size": size,
            "pid_file": str(task_dir / PID_FILE), "status_file": str(task_dir / STATUS_FILE),
            "netns": cfg.netns, "lock_fd": lock_fd,
        }
        write_json_atomic(task_dir / SPEC_FILE, spec)
        return self.spawn_executor(task_dir, lock_fd, cfg)

    def claim(self, task_dir: Path, cfg: TaskConfig) -> int | TaskHandle:
        """Take the task dir's executor lock: its fd, to start an executor; or the handle of the
        live executor already running this task, adopted."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            fd = claim_task_dir(task_dir)
            if fd is not None:
                return fd
            if read_json(task_dir / STATUS_FILE) is None:
                return self._await_start(None, task_dir, cfg)
            # its executor has finished the task and is on its way out: wait for the lock
            if time.monotonic() >= deadline:
                raise DriverError(f"failed to start: the previous executor in {task_dir} does not exit")
            time.sleep(POLL)

    def spawn_executor(self, task_dir: Path, lock_fd: int, cfg: TaskConfig) -> TaskHandle:
        """Start the executor on the spec in `task_dir`, handing it the locked `lock_fd`."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_YURT_SRC, env.get("PYTHONPATH")) if p)
        binary = self.supervisor.binary()
        with open(task_dir / EXECUTOR_LOG, "ab") as log:
            os.chmod(task_dir / EXECUTOR_LOG, 0o600)
            proc = subprocess.Popen(
                [sys.executable, "-m", "yurt.client.executor", str(task_dir / SPEC_FILE),
                 *([binary] if binary else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True, pass_fds=(lock_fd,), env=env, cwd=str(task_dir))
        with self._lock:
            self._children[proc.pid] = proc
        return self._await_start(proc, task_dir, cfg)

    def _await_start(self, proc: subprocess.Popen | None, task_dir: Path, cfg: TaskConfig) -> TaskHandle:
        """The handle once the executor reports the task's pid. `proc` is None when adopting an
        executor an earlier agent started: then its lock says whether it is still there."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pids = read_json(task_dir / PID_FILE)
            if pids:
                return TaskHandle(
                    driver=NAME, alloc_id=cfg.alloc_id, task=cfg.name, pid=pids["task_pid"],
                    pid_start=pids["task_start"], executor_pid=pids["executor_pid"],
                    executor_start=pids["executor_start"], started_at=pids["started_at"],
                    task_dir=str(task_dir))
            status = read_json(task_dir / STATUS_FILE)
            if status and status.get("start_error"):
                if proc is not None:
                    self._reap(proc.pid)
                raise DriverError(f"failed to start: {status['start_error']}")
            if proc is not None and proc.poll() is not None:
                raise DriverError(f"failed to start: executor exited with code {proc.returncode}: "
                                  f"{self._log_tail(task_dir)}")
            if proc is None and not executor_running(task_dir) and not read_json(task_dir / PID_FILE):
                raise DriverError(f"failed to start: the executor found in {task_dir} exited without "
                                  f"reporting the task: {self._log_tail(task_dir)}")
            time.sleep(POLL)
        if proc is not None:
            proc.kill()
        raise DriverError("failed to start: executor did not report the task within "
                          f"{START_TIMEOUT:.0f}s: {self._log_tail(task_dir)}")

    @staticmethod
    def _log_tail(task_dir: Path) -> str:
        try:
            return (task_dir / EXECUTOR_LOG).read_text(errors="replace")[-500:].strip()
        except OSError:
            return ""

    def _reap(self, pid: int, wait: float = 0.0) -> None:
        """Collect the executor `pid` if this agent started it and it exited (waited for up to
        ``wait`` s). Only that one: with hundreds of tasks, each follower reaps its own."""
        with self._lock:
            proc = self._children.get(pid)
        if proc is None:
            return
        try:
            proc.wait(wait) if wait > 0 else proc.poll()
        except subprocess.TimeoutExpired:
            pass
        if proc.returncode is not None:
            with self._lock:
                self._children.pop(pid, None)

    # --- follow -----------------------------------------------------------------------------

    def _status(self, handle: TaskHandle) -> ExitResult | None:
        data = read_json(Path(handle.task_dir) / STATUS_FILE)
        if not data:
            return None
        if data.get("start_error"):
            return ExitResult(exit_code=-1, err=data["start_error"])
        return ExitResult(exit_code=int(data.get("exit_code", 0)), signal=int(data.get("signal", 0)),
                          oom_killed=bool(data.get("oom_killed", False)))

    def _executor_alive(self, handle: TaskHandle) -> bool:
        self._reap(handle.executor_pid)
        return is_alive(handle.executor_pid, handle.executor_start)

    def _task_alive(self, handle: TaskHandle) -> bool:
        return is_alive(handle.pid, handle.pid_start)

    def wait(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self._status(handle)
            if result is not None:
                self._reap(handle.executor_pid)
                return result
            if not self._executor_alive(handle):
                result = self._status(handle)  # it may have just written it
                if result is not None:
                    return result
                if self._task_alive(handle):
                    kill_group(handle.pid, _signal.SIGKILL)
                return ExitResult(exit_code=-1, err="executor exited without reporting the task's status")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if self._sleep_until_exit(handle, IDLE_CHECK if deadline is None else min(deadline - now, IDLE_CHECK)):
                return None   # interrupted

    def _waker(self, handle: TaskHandle) -> int:
        with self._lock:
            fd = self._wakers.get(handle.executor_pid)
            if fd is None:
                fd = self._wakers[handle.executor_pid] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return fd

    def _drop_waker(self, handle: TaskHandle) -> None:
        """The task is gone: its waker is retired, and closed a while later. Closing it at once
        let another thread still in `wait` (a restart's stop) read or select on the number after
        the kernel gave it to another file."""
        now = time.monotonic()
        with self._lock:
            fd = self._wakers.pop(handle.executor_pid, None)
            if fd is not None:
                self._retired.append((now, fd))
            old = [f for t, f in self._retired if now - t > RETIRE_AFTER]
            self._retired = [(t, f) for t, f in self._retired if now - t <= RETIRE_AFTER]
        for f in old:
            os.close(f)

    @staticmethod
    def _take_wake(fd: int) -> bool:
        try:
            return os.eventfd_read(fd) > 0
        except BlockingIOError:
            return False

    def interrupt(self, handle: TaskHandle) -> None:
        os.eventfd_write(self._waker(handle), 1)

    def _sleep_until_exit(self, handle: TaskHandle, seconds: float) -> bool:
        """Wait up to `seconds`, woken as soon as the executor exits (a pidfd: no polling, so a
        node with hundreds of tasks at rest costs its agent next to nothing) or `interrupt` is
        called (then True)."""
        wake = self._waker(handle)
        try:
            fd = os.pidfd_open(handle.executor_pid)
        except OSError:
            time.sleep(min(seconds, POLL))   # gone already, or no pidfd on this kernel
            return self._take_wake(wake)
        try:
            if is_alive(handle.executor_pid, handle.executor_start):   # the pid is still ours
                ready, _, _ = select.select([fd, wake], [], [], seconds)
                if wake in ready:
                    return self._take_wake(wake)
        finally:
            os.close(fd)
        return False

    def recover(self, handle: TaskHandle) -> None:
        if self._status(handle) is not None or self._executor_alive(handle):
            return
        if self._task_alive(handle):
            kill_group(handle.pid, _signal.SIGKILL)
        raise DriverError(f"failed to recover task {handle.task!r}: its executor "
                          f"(pid {handle.executor_pid}) is gone")

    # --- stop -------------------------------------------------------------------------------

    def signal(self, handle: TaskHandle, signal: str) -> None:
        if self._task_alive(handle):
            kill_group(handle.pid, signal_number(signal))

    def stop(self, handle: TaskHandle, signal: str, timeout: float) -> None:
        self._take_wake(self._waker(handle))   # an interrupt meant the follower, not this stop
        if self._status(handle) is not None:
            return
        if self._task_alive(handle):
            kill_group(handle.pid, signal_number(signal))
        if self.wait(handle, timeout) is not None:
            return
        if self._task_alive(handle):
            kill_group(handle.pid, _signal.SIGKILL)
        if self.wait(handle, KILL_GRACE) is None:
            raise DriverError(f"task {handle.task!r} did not exit after SIGKILL")

    def destroy(self, handle: TaskHandle) -> None:
        if self._status(handle) is None and (self._task_alive(handle) or self._executor_alive(handle)):
            self.stop(handle, "SIGKILL", 0)
        self._reap(handle.executor_pid, wait=5.0)
        self._drop_waker(handle)

    def stats(self, handle: TaskHandle) -> TaskStats:
        return process_stats(handle.pid)


def link_mounts(task_dir: Path, mounts: list[tuple[str, str, bool]]) -> None:
    """raw_exec has no file system isolation to mount into (Nomad mounts nothing for it): each
    volume_mount's destination becomes a symlink in the task dir (<alloc>/<task>/<destination>,
    where an exec task's chroot would have it) to the host volume's path. read_only is not
    enforced: the task runs as its user on the host."""
    for host, dest, _ in mounts:
        link = task_dir / dest.lstrip("/")
        if link.is_symlink():
            if os.readlink(link) == host:
                continue
            link.unlink()
        elif link.exists():
            raise DriverError(f'volume_mount destination "{dest}" already exists in the task directory',
                              recoverable=False)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(host, link)
