"""Per-task cgroups for isolated drivers: cpu shares, memory limits, OOM detection, cleanup.

v1 (a hierarchy per controller): ``/sys/fs/cgroup/<controller>/yurt/<alloc-id>.<task>`` for cpu,
cpuacct, memory and pids. v2 (unified): ``/sys/fs/cgroup/yurt.slice/<alloc-id>.<task>``.
Limits follow Nomad: cpu.shares = the task's cpu MHz (v2: converted to cpu.weight), the memory
hard limit = memory_max if set (else memory) with memory as the soft limit, and no swap.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
V1_PARENT = "yurt"
V2_PARENT = "yurt.slice"
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
V1_REQUIRED = ("cpu", "memory")
V2_REQUIRED = ("cpu", "memory")
MB = 1024 * 1024


class CgroupError(Exception):
    """Setting up a task's cgroup failed; the message says which file and why."""


def version(root: Path = ROOT) -> int:
    """2 for a unified hierarchy at ``root``, else 1 (0 when nothing is mounted there)."""
    if (root / "cgroup.controllers").exists():
        return 2
    if any((root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return 1
    return 0


def missing(root: Path = ROOT) -> str:
    """What this node lacks for per-task cgroups ("" when nothing)."""
    v = version(root)
    if v == 0:
        return f"no cgroup hierarchy mounted at {root}"
    if v == 2:
        have = (root / "cgroup.controllers").read_text().split()
        lack = [c for c in V2_REQUIRED if c not in have]
        return f"cgroup v2 controllers not available: {', '.join(lack)}" if lack else ""
    lack = [c for c in V1_REQUIRED if not (root / c / "cgroup.procs").exists()]
    return f"cgroup v1 controllers not mounted: {', '.join(lack)}" if lack else ""


def cpu_weight(shares: int) -> int:
    """cgroup v1 cpu.shares -> v2 cpu.weight (runc's conversion)."""
    if shares <= 0:
        return 100
    return max(1, min(10000, 1 + ((max(shares, 2) - 2) * 9999) // 262142))


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror or e}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


class Cgroup:
    """The cgroup directories of one task (one per v1 controller, or one v2 directory)."""

    def __init__(self, paths: dict[str, str], version: int) -> None:
        self.paths = {k: Path(v) for k, v in paths.items()}
        self.version = version

    def to_dict(self) -> dict:
        return {"version": self.version, "paths": {k: str(v) for k, v in self.paths.items()}}

    @classmethod
    def from_dict(cls, data: dict | None) -> Cgroup | None:
        if not data or not data.get("paths"):
            return None
        return cls(data["paths"], int(data.get("version", 1)))

    # --- create -----------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, cpu_shares: int = 0, memory_mb: int = 0, memory_max_mb: int = 0,
               root: Path = ROOT) -> Cgroup:
        v = version(root)
        lack = missing(root)
        if lack:
            raise CgroupError(lack)
        if v == 2:
            cg = cls({"unified": str(root / V2_PARENT / name)}, 2)
        else:
            cg = cls({c: str(root / c / V1_PARENT / name) for c in V1_CONTROLLERS
                      if (root / c / "cgroup.procs").exists()}, 1)
        try:
            cg._make(root)
            cg._limit(cpu_shares, memory_mb, memory_max_mb)
        except CgroupError:
            cg.destroy()
            raise
        return cg

    def _make(self, root: Path) -> None:
        if self.version == 2:
            parent = root / V2_PARENT
            self._mkdir(parent)
            for d in (root, parent):
                for c in ("cpu", "memory", "pids"):
                    try:
                        (d / "cgroup.subtree_control").write_text(f"+{c}")
                    except OSError:
                        if c in V2_REQUIRED:
                            raise CgroupError(f"cannot enable the {c} controller in {d}") from None
        for path in self._unique():
            self._mkdir(path)

    @staticmethod
    def _mkdir(path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {path}: {e.strerror or e}") from None

    def _limit(self, cpu_shares: int, memory_mb: int, memory_max_mb: int) -> None:
        hard = memory_max_mb if memory_max_mb > memory_mb else memory_mb
        unlimited = memory_max_mb == -1
        soft = memory_mb if (memory_max_mb > memory_mb or unlimited) else 0
        if self.version == 2:
            d = self.paths["unified"]
            if cpu_shares > 0:
                _write(d / "cpu.weight", str(cpu_weight(cpu_shares)))
            if hard > 0 and not unlimited:
                _write(d / "memory.max", str(hard * MB))
            if soft > 0:
                _write(d / "memory.low", str(soft * MB))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            return
        if cpu_shares > 0 and "cpu" in self.paths:
            _write(self.paths["cpu"] / "cpu.shares", str(max(2, cpu_shares)))
        mem = self.paths["memory"]
        if hard > 0 and not unlimited:
            _write(mem / "memory.limit_in_bytes", str(hard * MB))
            if (mem / "memory.memsw.limit_in_bytes").exists():
                _write(mem / "memory.memsw.limit_in_bytes", str(hard * MB))
        if soft > 0:
            _write(mem / "memory.soft_limit_in_bytes", str(soft * MB))

    # --- use --------------------------------------------------------------------------------

    def _unique(self) -> list[Path]:
        seen: dict[str, Path] = {}
        for p in self.paths.values():
            seen.setdefault(os.path.realpath(p), p)
        return list(seen.values())

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the caller) into every directory of this cgroup."""
        pid = pid or os.getpid()
        for path in self._unique():
            _write(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        main = self.paths.get("memory") or self.paths.get("unified") or next(iter(self.paths.values()))
        return [int(x) for x in _read(main / "cgroup.procs").split() if x.isdigit()]

    def unique_paths(self) -> list[Path]:
        """The directories, each once (v1's cpu and cpuacct may be one)."""
        return self._unique()

    def oom_source(self) -> tuple[str, str]:
        """(file, key) that oom_killed reads: the key's counter > 0 ("failcnt": the file's number)."""
        if self.version == 2:
            return str(self.paths["unified"] / "memory.events"), "oom_kill"
        mem = self.paths.get("memory")
        if mem is None:
            return "", "oom_kill"
        if "oom_kill " in _read(mem / "memory.oom_control"):
            return str(mem / "memory.oom_control"), "oom_kill"
        return str(mem / "memory.failcnt"), "failcnt"

    def oom_killed(self) -> bool:
        if self.version == 2:
            return _counter(_read(self.paths["unified"] / "memory.events"), "oom_kill") > 0
        mem = self.paths.get("memory")
        if mem is None:
            return False
        control = _read(mem / "memory.oom_control")
        if "oom_kill " in control:
            return _counter(control, "oom_kill") > 0
        return _counter("failcnt " + _read(mem / "memory.failcnt").strip(), "failcnt") > 0

    def usage(self) -> tuple[float, float, int]:
        """(cpu user seconds, cpu system seconds, memory rss bytes)."""
        if self.version == 2:
            d = self.paths["unified"]
            cpu = _read(d / "cpu.stat")
            return (_counter(cpu, "user_usec") / 1e6, _counter(cpu, "system_usec") / 1e6,
                    _counter(_read(d / "memory.stat"), "anon"))
        ticks = os.sysconf("SC_CLK_TCK")
        acct = _read(self.paths["cpuacct"] / "cpuacct.stat") if "cpuacct" in self.paths else ""
        stat = _read(self.paths["memory"] / "memory.stat") if "memory" in self.paths else ""
        rss = _counter(stat, "total_rss") or _counter(stat, "rss")
        return _counter(acct, "user") / ticks, _counter(acct, "system") / ticks, rss

    # --- cleanup ----------------------------------------------------------------------------

    def destroy(self, timeout: float = 5.0) -> bool:
        """Kill what is left inside and remove the directories; True when all are gone."""
        deadline = time.monotonic() + timeout
        left = [p for p in self._unique() if p.exists()]
        while left:
            for path in list(left):
                for pid in (int(x) for x in _read(path / "cgroup.procs").split() if x.isdigit()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    path.rmdir()
                except OSError as e:
                    if e.errno == errno.EBUSY:
                        continue  # processes still leaving: try again
                left.remove(path)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        for p in self.paths.values():  # duplicates by symlink (cpu,cpuacct) are gone with theirs
            if p.exists():
                return False
        return True
