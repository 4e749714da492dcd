"""What a node's allocations that still hold resources add up to.

The store's read model keeps one `NodeUsed` per node, updated as allocations are written, so the
scheduler starts a node's usage from it instead of adding up every allocation on the node again
for each evaluation. Like every stored object it is replaced, never changed, once a snapshot may
see it (`copy()` first).
"""

from __future__ import annotations

from .alloc import Allocation

JobKey = tuple[str, str]   # (namespace, job id)


class NodeUsed:
    __slots__ = ("count", "cpu", "mem", "disk", "ports", "jobs", "groups")

    def __init__(self) -> None:
        self.count = 0                                  # allocations holding resources
        self.cpu = self.mem = self.disk = 0             # MHz, MB, MB
        self.ports: dict[int, int] = {}                 # host port -> allocations holding it
        self.jobs: dict[JobKey, int] = {}               # allocations per job
        self.groups: dict[JobKey, dict[str, int]] = {}  # allocations per job per task group

    def copy(self) -> NodeUsed:
        c = NodeUsed()
        c.count, c.cpu, c.mem, c.disk = self.count, self.cpu, self.mem, self.disk
        c.ports, c.jobs = dict(self.ports), dict(self.jobs)
        c.groups = {k: dict(v) for k, v in self.groups.items()}
        return c

    def add(self, alloc: Allocation, sign: int) -> None:
        """Count `alloc` in (sign 1) or out (-1); the caller passes only non-terminal ones."""
        ar = alloc.allocated_resources
        for t in ar.tasks.values():
            self.cpu += sign * t.cpu.cpu_shares
            self.mem += sign * t.memory.memory_mb
        self.disk += sign * ar.shared.disk_mb
        self.count += sign
        for p in ar.shared.ports:
            n = self.ports.get(p.value, 0) + sign
            if n > 0:
                self.ports[p.value] = n
            else:
                self.ports.pop(p.value, None)
        key = (alloc.namespace, alloc.job_id)
        n = self.jobs.get(key, 0) + sign
        groups = self.groups.setdefault(key, {})
        g = groups.get(alloc.task_group, 0) + sign
        if g > 0:
            groups[alloc.task_group] = g
        else:
            groups.pop(alloc.task_group, None)
        if n > 0:
            self.jobs[key] = n
        else:
            self.jobs.pop(key, None)
            self.groups.pop(key, None)
