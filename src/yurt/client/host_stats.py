"""Resource usage in Nomad's shapes: an allocation's tasks (`AllocResourceUsage`, from the
drivers' own figures) and the host (`HostStats`, from /proc and statvfs)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node_agent import NodeAgent

TICKS = os.sysconf("SC_CLK_TCK")


def _usage(cpu_user: float, cpu_system: float, rss: int) -> dict[str, Any]:
    total = cpu_user + cpu_system
    return {"MemoryStats": {"RSS": rss, "Usage": rss, "Measured": ["RSS"]},
            "CpuStats": {"UserMode": cpu_user, "SystemMode": cpu_system, "TotalTicks": total * TICKS,
                         "Percent": 0.0, "Measured": ["User Mode", "System Mode", "Total Ticks"]},
            "DeviceStats": []}


def alloc_usage(agent: NodeAgent, alloc_id: str, task: str = "") -> dict[str, Any]:
    """`/v1/client/allocation/<id>/stats`: each running task's CPU seconds and RSS and their sum."""
    from yurt.errors import NotFound
    runner = agent.runners.get(alloc_id)
    if runner is None:
        raise NotFound(f"allocation {alloc_id[:8]} does not run on this node")
    now = time.time_ns()
    tasks: dict[str, Any] = {}
    tu = ts = 0.0
    rss = 0
    for name, tr in list(runner.task_runners.items()):
        if task and name != task:
            continue
        handle = tr.handle
        if handle is None or not tr.is_running():
            continue
        st = tr.driver.stats(handle)
        tu, ts, rss = tu + st.cpu_user_seconds, ts + st.cpu_system_seconds, rss + st.rss_bytes
        tasks[name] = {"ResourceUsage": _usage(st.cpu_user_seconds, st.cpu_system_seconds, st.rss_bytes),
                       "Timestamp": now, "Pids": None}
    if task and task not in tasks:
        raise NotFound(f'task "{task}" of allocation {alloc_id[:8]} is not running')
    return {"ResourceUsage": _usage(tu, ts, rss), "Tasks": tasks, "Timestamp": now}


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    return out


def host_stats(data_dir: str) -> dict[str, Any]:
    """`/v1/client/stats`: memory, per-CPU seconds, the data dir's disk, uptime."""
    mem = _meminfo()
    cpus = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                user, nice, system, idle = (int(v) / TICKS for v in vals[:4])
                total = sum(int(v) for v in vals[:8]) / TICKS
                cpus.append({"CPU": name, "User": user + nice, "System": system, "Idle": idle, "Total": total})
    with open("/proc/uptime") as f:
        uptime = int(float(f.read().split()[0]))
    st = os.statvfs(data_dir)
    size, avail = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    used = size - st.f_bfree * st.f_frsize
    return {"Memory": {"Total": mem.get("MemTotal", 0), "Available": mem.get("MemAvailable", 0),
                       "Used": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0), "Free": mem.get("MemFree", 0)},
            "CPU": cpus, "CPUTicksConsumed": sum(c["Total"] - c["Idle"] for c in cpus) * TICKS,
            "DiskStats": [{"Device": "", "Mountpoint": data_dir, "Size": size, "Used": used, "Available": avail,
                           "UsedPercent": round(100.0 * used / size, 2) if size else 0.0,
                           "InodesUsedPercent": round(100.0 * (st.f_files - st.f_ffree) / st.f_files, 2)
                           if st.f_files else 0.0}],
            "AllocDirStats": None, "DeviceStats": [], "Uptime": uptime, "Timestamp": time.time_ns()}
