"""`alloc exec`: a command run inside a running task's environment, as its driver isolates it.

raw_exec: the task's environment, working directory and user (read from its process in /proc).
exec: the same, entered into the task's namespaces and root with nsenter (mount, pid, ipc, uts,
network), and its cgroup joined. docker: the Docker Engine's exec (`/containers/{id}/exec`).

With a tty the command gets a pseudo-terminal (its size follows `resize`); without, pipes. A
session's output is read with `read` (("stdout"|"stderr", bytes), None at its end), its exit code
with `wait`.
"""

from __future__ import annotations

import abc

import fcntl
import os
import queue
import struct
import subprocess
import termios
import threading
from typing import Any

from .drivers.base import TaskHandle

Output = tuple[str, bytes]


class ExecError(Exception):
    """The command could not be started; the message is for the user."""


def _proc_env(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _proc_ids(pid: int) -> tuple[int, int]:
    uid = gid = -1
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def _cgroup_procs(handle: TaskHandle) -> list[str]:
    """The task's cgroup (v1: one directory per controller, v2: one): their cgroup.procs."""
    from .cgroups import Cgroup
    cgroup = Cgroup.from_dict(handle.state.get("cgroup"))
    return [str(path / "cgroup.procs") for path in cgroup.unique_paths()] if cgroup is not None else []


def _task_pid(handle: TaskHandle) -> int:
    """The task's own process: for exec the handle's pid is the sandbox's init (pid 1 of the
    task's pid namespace, root, without the task's environment): the task is its child."""
    pid = handle.pid
    if not pid or not os.path.exists(f"/proc/{pid}"):
        raise ExecError(f'task "{handle.task}" has no running process: alloc exec needs a running task')
    if handle.driver == "exec":
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
    return pid


def start(handle: TaskHandle, command: list[str], tty: bool, docker_client: Any = None) -> ExecSession:
    """The command started inside the task of `handle`."""
    if not command:
        raise ExecError("no command given")
    if handle.driver == "docker":
        if docker_client is None:
            raise ExecError("the docker driver is not available on this node")
        return DockerSession(docker_client, handle.state["container_id"], command, tty)
    pid = _task_pid(handle)
    try:
        env = _proc_env(pid)
        uid, gid = _proc_ids(pid)
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError as e:
        raise ExecError(f'cannot read the environment of task "{handle.task}" (pid {pid}): {e}') from None
    if handle.driver == "exec":
        argv = ["nsenter", "-t", str(pid), "-m", "-p", "-i", "-u", "-n", "-r", "-w",
                "-S", str(uid), "-G", str(gid), "--", *command]
        return ProcessSession(argv, env, None, -1, -1, tty, _cgroup_procs(handle))
    same_user = os.geteuid() == uid
    return ProcessSession(command, env, cwd, -1 if same_user else uid, -1 if same_user else gid, tty, [])


class ExecSession(abc.ABC):
    """One running `alloc exec` command, whatever runs it (a local process, a docker exec)."""

    @abc.abstractmethod
    def read(self) -> Output | None: ...

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def close_stdin(self) -> None: ...

    @abc.abstractmethod
    def resize(self, height: int, width: int) -> None: ...

    @abc.abstractmethod
    def wait(self) -> int: ...

    @abc.abstractmethod
    def kill(self) -> None: ...


class ProcessSession(ExecSession):
    """A local process, on a pty or on pipes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None, uid: int, gid: int,
                 tty: bool, cgroup_procs: list[str]) -> None:
        self._out: queue.Queue[Output | None] = queue.Queue(maxsize=64)
        self._open = 0
        self._master = -1

        def prepare() -> None:   # in the child, before exec
            for procs in cgroup_procs:   # the task's limits hold the command too
                try:
                    with open(procs, "w") as f:
                        f.write(str(os.getpid()))
                except OSError:
                    pass
            if tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        kw: dict[str, Any] = {"env": env, "cwd": cwd, "start_new_session": True, "preexec_fn": prepare}
        if uid >= 0:
            kw.update(user=uid, group=gid, extra_groups=[])
        try:
            if tty:
                self._master, slave = os.openpty()
                try:
                    self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, **kw)
                finally:
                    os.close(slave)
                self._pump(self._master, "stdout")
            else:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, **kw)
                assert self.proc.stdout is not None and self.proc.stderr is not None
                self._pump(self.proc.stdout.fileno(), "stdout")
                self._pump(self.proc.stderr.fileno(), "stderr")
        except (OSError, subprocess.SubprocessError) as e:
            if self._master >= 0:
                os.close(self._master)
            raise ExecError(f"{argv[argv.index('--') + 1] if '--' in argv else argv[0]}: {e}") from None

    def _pump(self, fd: int, stream: str) -> None:
        self._open += 1

        def run() -> None:
            try:
                while True:
                    try:
                        data = os.read(fd, 32768)
                    except OSError:   # a pty's master reads EIO once the command has ended
                        data = b""
                    if not data:
                        break
                    self._out.put((stream, data))
            finally:
                self._out.put(None)

        threading.Thread(target=run, daemon=True, name=f"exec-{stream}").start()

    def read(self) -> Output | None:
        while self._open:
            item = self._out.get()
            if item is not None:
                return item
            self._open -= 1
        return None

    def write(self, data: bytes) -> None:
        try:
            if self._master >= 0:
                os.write(self._master, data)
            elif self.proc.stdin is not None:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except OSError:   # the command has ended, or closed its stdin
            pass

    def close_stdin(self) -> None:
        if self._master >= 0:
            self.write(b"\x04")   # the terminal's end-of-file
        elif self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def resize(self, height: int, width: int) -> None:
        if self._master >= 0:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def wait(self) -> int:
        code = self.proc.wait()
        if self._master >= 0:
            while self._open:   # what the pty still holds is read before it is closed
                if self.read() is None:
                    break
            os.close(self._master)
            self._master = -1
        return 128 - code if code < 0 else code

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass


class DockerSession(ExecSession):
    """The Docker Engine's exec: create, start hijacked, resize, inspect for the exit code."""

    def __init__(self, client: Any, container_id: str, command: list[str], tty: bool) -> None:
        import docker
        self.api = client.api
        self.tty = tty
        try:
            self.exec_id = self.api.exec_create(container_id, command, stdin=True, tty=tty)["Id"]
            self.sock = self.api.exec_start(self.exec_id, tty=tty, socket=True)
        except docker.errors.DockerException as e:
            raise ExecError(f"docker exec: {e}") from None
        self.raw = getattr(self.sock, "_sock", self.sock)
        self._buf = b""

    def _recv(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self.raw.recv(32768)
            if not data:
                break
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read(self) -> Output | None:
        try:
            if self.tty:
                data = self._buf or self.raw.recv(32768)
                self._buf = b""
                return ("stdout", data) if data else None
            header = self._recv(8)   # the multiplexed stream: 1 stdout, 2 stderr, then the length
            if len(header) < 8:
                return None
            size = struct.unpack(">I", header[4:])[0]
            return ("stderr" if header[0] == 2 else "stdout", self._recv(size))
        except OSError:
            return None

    def write(self, data: bytes) -> None:
        try:
            self.raw.sendall(data)
        except OSError:
            pass

    def close_stdin(self) -> None:
        import socket
        try:
            self.raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def resize(self, height: int, width: int) -> None:
        if self.tty:
            try:
                self.api.exec_resize(self.exec_id, height=height, width=width)
            except Exception:   # noqa: BLE001 -- a resize before the exec starts is harmless to lose
                pass

    def wait(self) -> int:
        import time
        for _ in range(600):
            info = self.api.exec_inspect(self.exec_id)
            if not info.get("Running"):
                try:
                    self.sock.close()
                except OSError:
                    pass
                return int(info.get("ExitCode") or 0)
            time.sleep(0.1)
        return -1

    def kill(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
