"""The executor: a small detached process that runs one task and outlives the agent.

``python -m yurt.client.executor <spec.json>`` starts the task in its own process group, pumps
its stdout/stderr into rotating files under ``alloc/logs``, forwards the signals it receives to
the task's process group, and when the task ends kills what is left of that group and writes
the exit status to ``status_file``. The agent finds the task through ``pid_file``; both files
are written atomically, so an agent that restarts can read them at any time.

Spec keys: command, args, env, cwd, user, task, logs_dir, logs_disabled, max_files,
max_file_size (bytes), pid_file, status_file, netns (a network namespace to join first),
lock_fd (the task dir's executor lock, taken by the agent and inherited: held for the
executor's whole life, so no agent starts a second executor for the task; the task itself does
not inherit it), isolation (optional: run the task in its own namespaces, root and cgroup; see
`sandbox`).
Without ``isolation`` (raw_exec) the task is a plain child in its own session.

``python -m yurt.client.executor <spec.json> <supervisor>``: once the task runs and pid_file is
written, the executor execv's the compiled supervisor (`supervise.c`, built by `supervise.py`),
which does the rest (logs, signals, the group, the cgroup, status_file) in ~1 MB; same pid, so
the task stays its child and the lock stays held. Without it this process does it all in Python.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .logrotate import FileRotator
from .procs import join_netns, kill_group, start_time, write_json_atomic

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)
DRAIN_TIMEOUT = 5.0


def _pump(fd: int, rotator: FileRotator) -> None:
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            rotator.write(data)
    finally:
        rotator.close()
        os.close(fd)


def run(spec: dict, supervisor: str | None = None) -> int:
    if spec.get("lock_fd") is not None:
        os.set_inheritable(int(spec["lock_fd"]), False)  # held by this process, not by the task
    status_file = Path(spec["status_file"])
    pid_file = Path(spec["pid_file"])
    task = spec["task"]
    disabled = bool(spec.get("logs_disabled"))
    stdout = stderr = subprocess.DEVNULL
    if not disabled:
        stdout = stderr = subprocess.PIPE
    child: subprocess.Popen | None = None
    if spec.get("netns"):
        try:
            join_netns(spec["netns"])  # the task inherits the group's network namespace
        except OSError as e:
            write_json_atomic(status_file, {"start_error": f"cannot join network namespace {spec['netns']}: {e}",
                                            "finished_at": time.time_ns()})
            return 1

    def forward(signum, _frame):
        if child is not None:
            kill_group(child.pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)

    iso = spec.get("isolation")
    try:
        if iso:
            child = _spawn_isolated(spec, iso, capture=not disabled)
        else:
            child = subprocess.Popen(
                [spec["command"], *spec.get("args", [])], env=spec.get("env", {}),
                cwd=spec.get("cwd") or None, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                start_new_session=True, user=spec.get("user") or None, close_fds=True)
    except (OSError, ValueError, KeyError) as e:
        write_json_atomic(status_file, {"start_error": str(e), "finished_at": time.time_ns()})
        _cleanup_isolated(iso)
        return 1

    rotators = []
    if not disabled:  # the log files exist once the task is reported started
        size = int(spec.get("max_file_size") or 10 * 1024 * 1024)
        files = int(spec.get("max_files") or 10)
        try:
            rotators = [FileRotator(spec["logs_dir"], f"{task}.{name}", files, size)
                        for name in ("stdout", "stderr")]
        except OSError as e:
            kill_group(child.pid, signal.SIGKILL)
            child.wait()
            write_json_atomic(status_file, {"start_error": f"cannot open the task's log files in "
                                            f"{spec['logs_dir']}: {e}", "finished_at": time.time_ns()})
            _cleanup_isolated(iso)
            return 1
    write_json_atomic(pid_file, {
        "executor_pid": os.getpid(), "executor_start": start_time(os.getpid()),
        "task_pid": child.pid, "task_start": start_time(child.pid), "started_at": time.time_ns()})

    if supervisor:
        _become_supervisor(supervisor, spec, child, iso)  # returns only if it cannot
    pumps = []
    if not disabled:
        for stream, rotator in zip((child.stdout, child.stderr), rotators, strict=True):
            fd = os.dup(stream.fileno())
            stream.close()
            t = threading.Thread(target=_pump, args=(fd, rotator), daemon=True)
            t.start()
            pumps.append(t)

    code = child.wait()
    if not iso:  # an isolated task's pid namespace died with its init
        kill_group(child.pid, signal.SIGKILL)  # what the task left behind in its group
    deadline = time.monotonic() + DRAIN_TIMEOUT
    for t in pumps:
        t.join(max(0.0, deadline - time.monotonic()))
    result = {"exit_code": code if code >= 0 else 0, "signal": -code if code < 0 else 0,
              "oom_killed": _cleanup_isolated(iso), "finished_at": time.time_ns()}
    write_json_atomic(status_file, result)
    return 0


def _become_supervisor(binary: str, spec: dict, child, iso: dict | None) -> None:
    """execv the compiled supervisor, handing it the task, its pipes and its cgroup."""
    from .cgroups import Cgroup

    keep: list[int] = []
    if spec.get("lock_fd") is not None:
        keep.append(int(spec["lock_fd"]))
    args = [binary, f"pid={child.pid}", f"status={spec['status_file']}", f"task={spec['task']}",
            f"group_kill={0 if iso else 1}"]
    if child.stdout is not None and child.stderr is not None:
        out, err = child.stdout.fileno(), child.stderr.fileno()
        keep += [out, err]
        args += [f"out={out}", f"err={err}", f"logs={spec['logs_dir']}",
                 f"files={int(spec.get('max_files') or 10)}",
                 f"size={int(spec.get('max_file_size') or 10 * 1024 * 1024)}"]
    reports = getattr(child, "reports_fd", None)
    if reports is not None:
        keep.append(reports)
        args.append(f"reports={reports}")
    cgroup = Cgroup.from_dict(iso.get("cgroup")) if iso else None
    if cgroup is not None:
        args += [f"cgroup={p}" for p in cgroup.unique_paths()]
        oom_file, oom_key = cgroup.oom_source()
        args += [f"oom_file={oom_file}", f"oom_key={oom_key}"]
    for fd in keep:
        os.set_inheritable(fd, True)
    blocked = (*FORWARDED, signal.SIGCHLD)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # none is lost across the execv
    try:
        os.execv(binary, args)
    except OSError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        print(f"executor: cannot run the compiled supervisor {binary}: {e}; supervising in Python",
              file=sys.stderr, flush=True)


def _spawn_isolated(spec: dict, iso: dict, capture: bool):
    from .sandbox import SandboxError, spawn  # raw_exec never loads the namespace code

    argv = [spec.get("argv0") or spec["command"], *spec.get("args", [])]
    try:
        return spawn(iso, spec["command"], argv, spec.get("env", {}), capture=capture)
    except SandboxError as e:
        raise OSError(str(e)) from None


def _cleanup_isolated(iso: dict | None) -> bool:
    """Remove the task's cgroup; True when the kernel OOM-killed something in it."""
    if not iso or not iso.get("cgroup"):
        return False
    from .cgroups import Cgroup

    cgroup = Cgroup.from_dict(iso["cgroup"])
    if cgroup is None:
        return False
    oom = cgroup.oom_killed()
    cgroup.destroy()
    return oom


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m yurt.client.executor <spec.json> [<supervisor binary>]", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    return run(spec, argv[1] if len(argv) == 2 else None)


if __name__ == "__main__":
    sys.exit(main())
