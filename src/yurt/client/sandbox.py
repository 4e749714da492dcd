"""Starts one task isolated: new mount/pid/ipc/uts namespaces, pivot_root into the task dir.

Process tree (the executor has already joined the group's network namespace, if any)::

    executor (host namespaces; a child subreaper)
      └─ setup   joins the cgroup, unshares mnt/pid/ipc/uts, makes every mount private,
         │       builds the root (read-only binds of chroot_env, /alloc, /dev), exits
         └─ init  pid 1 of the new pid namespace: mounts /proc, pivot_root, forks the task,
            │     forwards signals to it, reaps orphans, reports its status, exits with it
            └─ task  setsid, drops capabilities and privileges, chdir, execve

Mounts live only in the task's private mount namespace, so the host's mount table never sees
them and they vanish with the last process. The stages report to the executor over a pipe,
one JSON object a line: {"pid": <init's host pid>}, {"started": true}, {"error": "..."},
{"exit": <wait status of the task>}.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from . import linux
from .cgroups import Cgroup

# what init passes on to the task (a pid namespace's init gets only signals it handles)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH, signal.SIGCONT, signal.SIGPWR)
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
BIND_FLAGS = linux.MS_NOSUID  # setuid binaries and file capabilities do not work inside
_MOUNT_FLAGS = {"nosuid": linux.MS_NOSUID, "nodev": linux.MS_NODEV, "noexec": linux.MS_NOEXEC}


class SandboxError(Exception):
    """The task could not be started inside its sandbox; the message is for the user."""


# --- the root file system ------------------------------------------------------------------


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts_under(target: str) -> list[tuple[str, int]]:
    """Mount points at or below ``target`` in this mount namespace, with their flags."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = _unescape(fields[4])
            if point == target or point.startswith(target.rstrip("/") + "/"):
                flags = 0
                for opt in fields[5].split(","):
                    flags |= _MOUNT_FLAGS.get(opt, 0)
                out.append((point, flags))
    return out


def _bind(source: str, target: Path, read_only: bool) -> None:
    if os.path.isdir(source):
        target.mkdir(parents=True, exist_ok=True)
    elif not target.exists():  # (a file over a file of a read-only bind needs nothing made)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC | BIND_FLAGS)
    if not read_only:
        return
    for point, flags in _mounts_under(str(target)):
        try:
            linux.mount(None, point, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY
                        | BIND_FLAGS | flags)
        except OSError:
            if point == str(target):
                raise


def _build_dev(dev: Path) -> None:
    dev.mkdir(exist_ok=True)
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=755,size=64k")
    for name in DEV_NODES:
        if os.path.exists(f"/dev/{name}"):
            (dev / name).touch()
            linux.mount(f"/dev/{name}", dev / name, None, linux.MS_BIND)
    for name, to in DEV_LINKS.items():
        os.symlink(to, dev / name)
    (dev / "pts").mkdir()
    (dev / "shm").mkdir()
    try:
        linux.mount("devpts", dev / "pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620")
    except OSError:
        pass  # no pseudo-terminals then
    linux.mount("shm", dev / "shm", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777")


def build_root(iso: dict) -> None:
    """Lay out the task's root file system (call inside the new mount namespace)."""
    root = Path(iso["root"])
    linux.mount(str(root), root, None, linux.MS_BIND | linux.MS_REC)  # pivot_root needs a mount
    for host, inside in (iso.get("chroot_env") or {}).items():
        if os.path.exists(host):
            _bind(host, root / inside.lstrip("/"), read_only=True)
    _bind(iso["alloc_dir"], root / "alloc", read_only=False)
    for host, inside, read_only in iso.get("volumes") or []:   # the task's host volume mounts
        _bind(host, root / inside.lstrip("/"), read_only=read_only)
    _build_dev(root / "dev")
    (root / "proc").mkdir(exist_ok=True)
    (root / "sys").mkdir(exist_ok=True)
    try:
        linux.mount("sysfs", root / "sys", "sysfs", linux.MS_RDONLY | linux.MS_NOSUID
                    | linux.MS_NODEV | linux.MS_NOEXEC)
    except OSError:
        pass  # optional: a task rarely needs /sys
    if iso.get("resolv_conf") and (root / "etc").is_dir():
        _bind(iso["resolv_conf"], root / "etc" / "resolv.conf", read_only=True)


# --- the stages ----------------------------------------------------------------------------


def _report(fd: int, **msg) -> None:
    try:
        os.write(fd, (json.dumps(msg) + "\n").encode())
    except OSError:
        pass


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def _drop_capabilities(keep: list[int] | None) -> None:
    if keep is None:
        return
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        if cap not in keep:
            linux.prctl(linux.PR_CAPBSET_DROP, cap)


def _task(iso: dict, path: str, argv: list[str], env: dict, out: int | None, err: int | None,
          ex_w: int) -> None:
    """The task's process: never returns."""
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out if out is not None else null, 1)
        os.dup2(err if err is not None else null, 2)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        uid, gid = int(iso.get("uid", 0)), int(iso.get("gid", 0))
        if uid == 0:
            _drop_capabilities(iso.get("caps"))
        os.setgroups([int(g) for g in iso.get("groups") or [gid]])
        os.setgid(gid)
        os.setuid(uid)
        try:
            os.chdir(iso.get("cwd") or "/")
        except OSError:
            os.chdir("/")
        os.closerange(3, ex_w)
        os.closerange(ex_w + 1, 65536)
        os.execve(path, argv, env)
    except BaseException as e:  # noqa: BLE001 - report anything, never return into the executor
        try:
            os.write(ex_w, f'exec: "{argv[0]}": {_describe(e)}'.encode())
        finally:
            os._exit(127)
    os._exit(127)


def _init(iso: dict, path: str, argv: list[str], env: dict, out: int | None, err: int | None,
          rep: int) -> None:
    """pid 1 of the task's pid namespace: never returns."""
    code = 1
    try:
        os.setsid()
        root = iso["root"]
        linux.mount("proc", os.path.join(root, "proc"), "proc",
                    linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        os.chdir(root)
        linux.pivot_root(".", ".")
        linux.umount2(".", linux.MNT_DETACH)  # the old root, stacked on the new one
        os.chdir("/")
        ex_r, ex_w = os.pipe()
        task = os.fork()
        if task == 0:
            _task(iso, path, argv, env, out, err, ex_w)
        os.close(ex_w)
        for fd in (out, err):
            if fd is not None:
                os.close(fd)
        failure = b""
        while chunk := os.read(ex_r, 4096):
            failure += chunk
        os.close(ex_r)
        if failure:
            os.waitpid(task, 0)
            _report(rep, error=failure.decode(errors="replace"))
            os._exit(1)

        def forward(signum, _frame):
            try:
                os.killpg(task, signum)
            except OSError:
                pass

        for sig in FORWARDED:
            signal.signal(sig, forward)
        _report(rep, started=True)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == task:
                _report(rep, exit=status)
                code = 0
                break
    except BaseException as e:  # noqa: BLE001
        _report(rep, error=_describe(e))
    finally:
        os._exit(code)


def _setup(iso: dict, path: str, argv: list[str], env: dict, out: int | None, err: int | None,
           rep: int) -> None:
    """The first child: namespaces and mounts, then forks init; never returns."""
    code = 1
    try:
        cgroup = Cgroup.from_dict(iso.get("cgroup"))
        if cgroup is not None:
            cgroup.join(os.getpid())
        flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS
        if iso.get("ipc_mode", "private") == "private":
            flags |= linux.CLONE_NEWIPC
        if iso.get("pid_mode", "private") == "private":
            flags |= linux.CLONE_NEWPID
        linux.unshare(flags)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        if iso.get("hostname"):
            linux.sethostname(iso["hostname"])
        build_root(iso)
        init = os.fork()
        if init == 0:
            _init(iso, path, argv, env, out, err, rep)
        _report(rep, pid=init)
        code = 0
    except BaseException as e:  # noqa: BLE001
        _report(rep, error=_describe(e))
    finally:
        os._exit(code)


# --- the executor's side -------------------------------------------------------------------


class SandboxProcess:
    """The running task as the executor sees it; quacks like the part of Popen it uses."""

    def __init__(self, pid: int, reports: _Reports, stdout, stderr) -> None:
        self.pid = pid  # init's pid on the host: signals sent to its group reach the task
        self._reports = reports
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None

    @property
    def reports_fd(self) -> int:
        """The report pipe (what the compiled supervisor reads the task's status from)."""
        return self._reports.fd

    def wait(self) -> int:
        """Block until the task ended; like Popen: the exit code, or -signal."""
        if self.returncode is not None:
            return self.returncode
        status = None
        while (msg := self._reports.next()) is not None:
            if "exit" in msg:
                status = int(msg["exit"])
        try:
            _, own = os.waitpid(self.pid, 0)
        except ChildProcessError:
            own = None
        if status is None:
            status = own if own is not None else signal.SIGKILL
        self.returncode = os.waitstatus_to_exitcode(status)
        self._reports.close()
        return self.returncode


class _Reports:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next(self) -> dict | None:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 4096) if self.fd >= 0 else b""
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return {"error": line.decode(errors="replace")}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def spawn(iso: dict, path: str, argv: list[str], env: dict, capture: bool = True) -> SandboxProcess:
    """Start the task; raises SandboxError when it could not be started.

    Call from a single-threaded process (it forks). ``path`` is the executable inside the root;
    ``capture`` gives the result ``stdout``/``stderr`` pipes (else the task writes to /dev/null).
    """
    out_r = err_r = None
    out_w = err_w = None
    if capture:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
    rep_r, rep_w = os.pipe()
    try:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)  # init becomes our child when setup exits
    except OSError:
        pass
    setup = os.fork()
    if setup == 0:
        os.close(rep_r)
        for fd in (out_r, err_r):
            if fd is not None:
                os.close(fd)
        _setup(iso, path, argv, env, out_w, err_w, rep_w)
    os.close(rep_w)
    for fd in (out_w, err_w):
        if fd is not None:
            os.close(fd)
    reports = _Reports(rep_r)
    init = 0
    error = ""
    started = False
    while not (started and init) and (msg := reports.next()) is not None:
        if "pid" in msg:  # from setup; init's "started" may come first
            init = int(msg["pid"])
        elif "error" in msg:
            error = msg["error"]
            break
        elif msg.get("started"):
            started = True
    os.waitpid(setup, 0)
    if error or not init:
        reports.close()
        if init:
            try:
                os.waitpid(init, 0)
            except ChildProcessError:
                pass
        for fd in (out_r, err_r):
            if fd is not None:
                os.close(fd)
        raise SandboxError(error or "the sandbox's init exited before it started the task")
    stdout = os.fdopen(out_r, "rb", buffering=0) if out_r is not None else None
    stderr = os.fdopen(err_r, "rb", buffering=0) if err_r is not None else None
    return SandboxProcess(init, reports, stdout, stderr)
