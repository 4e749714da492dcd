"""exec: runs a command isolated — own mount/pid/ipc/uts namespaces, a chroot of the task dir
with the host's system directories bound read-only, cgroup cpu/memory limits, a non-root user.

It shares raw_exec's detached executor (so tasks survive an agent restart and are recovered the
same way); the spec's ``isolation`` section makes the executor start the task through
`yurt.client.sandbox`. Inside, the task sees /alloc, /local, /secrets, /tmp, a minimal /dev and
its own /proc.
"""

from __future__ import annotations

import os
import posixpath
import pwd
import sys
from pathlib import Path
from typing import Any

from .. import cgroups, linux
from ..cgroups import Cgroup, CgroupError
from ..procs import write_json_atomic
from ..supervise import Supervisor
from .base import Capabilities, DriverError, DriverFingerprint, TaskConfig, TaskHandle, TaskStats
from .raw_exec import MB, PID_FILE, SPEC_FILE, STATUS_FILE, RawExecDriver

NAME = "exec"
# Nomad's client chroot_env default (host path -> path inside the task's root)
DEFAULT_CHROOT_ENV = {p: p for p in ("/bin", "/etc", "/lib", "/lib32", "/lib64",
                                     "/run/resolvconf", "/sbin", "/usr")}
CONFIG_KEYS = ("command", "args", "pid_mode", "ipc_mode", "cap_add", "cap_drop")
MODES = ("private", "host")
DEFAULT_USER = "nobody"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAMESPACES = ("mnt", "pid", "ipc", "uts")
CAPABILITIES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore")
# Nomad's default capabilities for exec tasks running as root
DEFAULT_CAPS = ("audit_write", "chown", "dac_override", "fowner", "fsetid", "kill", "mknod",
                "net_bind_service", "setfcap", "setgid", "setpcap", "setuid", "sys_chroot")


def _fail(message: str) -> DriverError:
    return DriverError(f"failed to start: {message}", recoverable=False)


def _cap_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f'"{key}" must be a list of capability names')
    out = []
    for v in value:
        name = v.strip().lower().removeprefix("cap_")
        if name != "all" and name not in CAPABILITIES:
            raise _fail(f'{key}: unknown capability "{v}"')
        out.append(name)
    return out


def parse_config(config: dict[str, Any], allow_caps: tuple[str, ...]) -> dict[str, Any]:
    """Validate the task's ``config`` block; raises DriverError naming the bad key."""
    config = config or {}
    for key in config:
        if key not in CONFIG_KEYS:
            raise _fail(f'unknown exec config key "{key}" (valid: {", ".join(CONFIG_KEYS)})')
    command = config.get("command")
    if not command or not isinstance(command, str):
        raise _fail('missing required "command" in the task\'s config')
    args = config.get("args") or []
    if not isinstance(args, list):
        raise _fail('"args" must be a list of strings')
    out: dict[str, Any] = {"command": command, "args": [str(a) for a in args]}
    for key in ("pid_mode", "ipc_mode"):
        mode = config.get(key) or "private"
        if mode not in MODES:
            raise _fail(f'{key} must be "private" or "host", not "{mode}"')
        out[key] = mode
    add, drop = _cap_list(config.get("cap_add"), "cap_add"), _cap_list(config.get("cap_drop"), "cap_drop")
    if "all" in add:
        add = list(allow_caps)
    denied = [c for c in add if c not in allow_caps]
    if denied:
        raise _fail(f"cap_add: capabilities not allowed on this client: {', '.join(denied)}")
    keep = set() if "all" in drop else (set(DEFAULT_CAPS) | set(add)) - set(drop)
    out["caps"] = sorted(CAPABILITIES.index(c) for c in keep)
    return out


class ChrootPaths:
    """Maps paths inside the task's root to host paths (chroot_env binds, /alloc, the task dir)."""

    def __init__(self, cfg: TaskConfig, chroot_env: dict[str, str]) -> None:
        self.binds = sorted(((posixpath.normpath(inside), host) for host, inside in chroot_env.items()
                             if os.path.exists(host)), key=lambda b: -len(b[0]))
        self.binds.append(("/alloc", str(cfg.alloc_dir)))
        self.binds[:0] = sorted(((posixpath.normpath("/" + dest), host) for host, dest, _ in cfg.mounts),
                                key=lambda b: -len(b[0]))
        self.root = str(cfg.task_dir)

    def host(self, inside: str) -> str:
        inside = posixpath.normpath(inside)
        for prefix, host in self.binds:
            if inside == prefix or inside.startswith(prefix.rstrip("/") + "/"):
                return host + inside[len(prefix):]
        return self.root + inside

    def runnable(self, inside: str) -> bool:
        path = self.host(inside)
        return os.path.isfile(path) and os.access(path, os.X_OK)

    def lookup(self, command: str, path_var: str) -> str:
        """The command's path inside the root (Nomad: local/, the task dir, then $PATH)."""
        if command.startswith("/"):
            candidates = [command]
        else:
            candidates = [f"/local/{command}", f"/{command}"]
            if "/" not in command:
                candidates += [posixpath.join(d or "/", command) for d in path_var.split(":")
                               if d.startswith("/") or not d]
        for candidate in candidates:
            if self.runnable(candidate):
                return posixpath.normpath(candidate)
        raise _fail(f'exec: "{command}": executable file not found in the task\'s chroot '
                    f"($PATH={path_var})")


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if name.isdigit():
            try:
                return pwd.getpwuid(int(name))
            except KeyError:
                pass
        raise _fail(f'user "{name}" does not exist on this node') from None


class ExecDriver(RawExecDriver):
    """The `exec` driver (on by default where the kernel allows it, like Nomad's)."""

    name = NAME
    # the task sees /alloc, /local, /secrets (taskenv)
    capabilities = Capabilities(fs_isolation="chroot", interruptible_wait=True)

    def __init__(self, enabled: bool = True, chroot_env: dict[str, str] | None = None,
                 allow_caps: list[str] | None = None, cgroup_root: str | os.PathLike = cgroups.ROOT,
                 supervisor: Supervisor | None = None) -> None:
        super().__init__(enabled=enabled, supervisor=supervisor)
        self.chroot_env = dict(DEFAULT_CHROOT_ENV if chroot_env is None else chroot_env)
        for host, inside in self.chroot_env.items():
            if not inside.startswith("/") or ".." in inside.split("/"):
                raise ValueError(f"chroot_env: {host!r} -> {inside!r}: the target must be an "
                                 "absolute path without '..'")
        self.allow_caps = tuple(c.lower().removeprefix("cap_") for c in (allow_caps or DEFAULT_CAPS))
        self.cgroup_root = Path(cgroup_root)

    # --- fingerprint ------------------------------------------------------------------------

    def missing(self) -> list[str]:
        """What this node lacks to run exec tasks."""
        lack = []
        if not sys.platform.startswith("linux"):
            return [f"exec needs Linux (this is {sys.platform})"]
        if os.geteuid() != 0:
            lack.append("the agent must run as root")
        ns = [n for n in NAMESPACES if not os.path.exists(f"/proc/self/ns/{n}")]
        if ns:
            lack.append(f"kernel without {', '.join(ns)} namespaces")
        if not linux.has_pivot_root():
            lack.append("pivot_root is not known on this machine type")
        cg = cgroups.missing(self.cgroup_root)
        if cg:
            lack.append(cg)
        return lack

    def fingerprint(self) -> DriverFingerprint:
        if not self.enabled:
            return DriverFingerprint(detected=False, healthy=False, description="disabled")
        lack = self.missing()
        if lack:
            return DriverFingerprint(detected=False, healthy=False, description="; ".join(lack))
        return DriverFingerprint(detected=True, healthy=True, description="Healthy",
                                 attributes={"driver.exec": "1"})

    # --- start ------------------------------------------------------------------------------

    def start(self, cfg: TaskConfig) -> TaskHandle:
        if not self.enabled:
            raise DriverError("exec is disabled on this client", recoverable=False)
        lack = self.missing()
        if lack:
            raise _fail("exec driver unavailable: " + "; ".join(lack))
        opts = parse_config(cfg.config, self.allow_caps)
        user = _user(cfg.user or DEFAULT_USER)
        env = self._env(cfg.env, user)
        paths = ChrootPaths(cfg, self.chroot_env)
        command = paths.lookup(opts["command"], env["PATH"])

        task_dir = Path(cfg.task_dir)
        self._prepare_dirs(cfg, user)
        name = f"{cfg.alloc_id}.{cfg.name}"
        claimed = self.claim(task_dir, cfg)
        if isinstance(claimed, TaskHandle):   # an earlier agent started this task's executor
            claimed.driver = NAME
            claimed.state = {"cgroup": self._cgroup_paths(name)}
            return claimed
        lock_fd = claimed
        try:
            return self._start_isolated(task_dir, lock_fd, cfg, opts, user, env, command, name)
        finally:
            os.close(lock_fd)

    def _start_isolated(self, task_dir: Path, lock_fd: int, cfg: TaskConfig, opts: dict,
                        user: pwd.struct_passwd, env: dict[str, str], command: str, name: str) -> TaskHandle:
        for stale_file in self.stale_files:
            (task_dir / stale_file).unlink(missing_ok=True)
        resolv = ""
        if cfg.resolv_conf:
            resolv = str(task_dir / ".resolv.conf")
            Path(resolv).write_text(cfg.resolv_conf)
            os.chmod(resolv, 0o644)
        stale = Cgroup.from_dict(self._cgroup_paths(name))
        if stale is not None:
            stale.destroy()  # a task of the same name that did not clean up
        try:
            cgroup = Cgroup.create(name, cfg.cpu_shares, cfg.memory_mb, cfg.memory_max_mb,
                                   self.cgroup_root)
        except CgroupError as e:
            raise DriverError(f"failed to start: cgroup setup failed: {e}") from None
        size = cfg.max_file_size_bytes or cfg.max_file_size_mb * MB
        spec = {
            "command": command, "argv0": opts["command"], "args": opts["args"], "env": env,
            "cwd": "/local", "task": cfg.name, "logs_dir": str(cfg.logs_dir),
            "logs_disabled": cfg.logs_disabled, "max_files": cfg.max_files, "max_file_size": size,
            "pid_file": str(task_dir / PID_FILE), "status_file": str(task_dir / STATUS_FILE),
            "netns": cfg.netns, "lock_fd": lock_fd,
            "isolation": {
                "root": str(task_dir), "chroot_env": self.chroot_env, "alloc_dir": str(cfg.alloc_dir),
                "resolv_conf": resolv, "hostname": cfg.hostname or cfg.alloc_id[:8],
                "pid_mode": opts["pid_mode"], "ipc_mode": opts["ipc_mode"], "caps": opts["caps"],
                "uid": user.pw_uid, "gid": user.pw_gid, "cwd": "/local",
                "groups": os.getgrouplist(user.pw_name, user.pw_gid),
                "cgroup": cgroup.to_dict(),
                "volumes": [[host, dest, read_only] for host, dest, read_only in cfg.mounts],
            },
        }
        spec_file = task_dir / SPEC_FILE
        write_json_atomic(spec_file, spec)
        os.chmod(spec_file, 0o600)  # it is inside the task's root; the env is private
        try:
            handle = self.spawn_executor(task_dir, lock_fd, cfg)
        except DriverError:
            cgroup.destroy()
            raise
        handle.driver = NAME
        handle.state = {"cgroup": cgroup.to_dict()}
        return handle

    def _cgroup_paths(self, name: str) -> dict | None:
        v = cgroups.version(self.cgroup_root)
        if v == 2:
            paths = {"unified": str(self.cgroup_root / cgroups.V2_PARENT / name)}
        else:
            paths = {c: str(self.cgroup_root / c / cgroups.V1_PARENT / name) for c in cgroups.V1_CONTROLLERS}
        paths = {k: p for k, p in paths.items() if os.path.isdir(p)}
        return {"version": v, "paths": paths} if paths else None

    @staticmethod
    def _env(env: dict[str, str], user: pwd.struct_passwd) -> dict[str, str]:
        env = dict(env)
        env.setdefault("PATH", DEFAULT_PATH)
        inherited = {k: os.environ.get(k) for k in ("HOME", "USER", "LOGNAME")}
        for key, value in (("HOME", user.pw_dir), ("USER", user.pw_name), ("LOGNAME", user.pw_name)):
            if env.get(key) is None or env.get(key) == inherited[key]:  # the agent's, not the task's
                env[key] = value
        return env

    @staticmethod
    def _prepare_dirs(cfg: TaskConfig, user: pwd.struct_passwd) -> None:
        """The task's own dirs belong to its user; the shared ones are open to every task's."""
        task_dir = Path(cfg.task_dir)
        for sub in ("local", "secrets", "tmp"):
            d = task_dir / sub
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, user.pw_uid, user.pw_gid)
        token = task_dir / "secrets" / "nomad_token"   # the workload identity, the task's to read
        if token.exists():
            os.chown(token, user.pw_uid, user.pw_gid)
        for d in (Path(cfg.alloc_dir), Path(cfg.alloc_dir) / "data", Path(cfg.alloc_dir) / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o777)


    # --- cleanup and stats -------------------------------------------------------------------

    def destroy(self, handle: TaskHandle) -> None:
        super().destroy(handle)
        cgroup = Cgroup.from_dict((handle.state or {}).get("cgroup"))
        if cgroup is not None:
            cgroup.destroy()

    def stats(self, handle: TaskHandle) -> TaskStats:
        cgroup = Cgroup.from_dict((handle.state or {}).get("cgroup"))
        if cgroup is None:
            return super().stats(handle)
        user, system, rss = cgroup.usage()
        return TaskStats(cpu_user_seconds=user, cpu_system_seconds=system, rss_bytes=rss,
                         pids=cgroup.pids())
