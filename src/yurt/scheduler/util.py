"""Small helpers: ids, alloc names, resource sums, times."""

from __future__ import annotations

import random
import uuid

from yurt.structs import Allocation, Node, TaskGroup
from yurt.structs.times import parse_rfc3339

ALLOC_NOT_NEEDED = "alloc not needed due to job update"
ALLOC_LOST = "alloc is lost since its node is down"
ALLOC_MIGRATING = "alloc is being migrated"
ALLOC_UPDATING = "alloc is being updated due to job update"
ALLOC_RESCHEDULED = "alloc was rescheduled because it failed"

LOST_NODE_STATUSES = ("down", "disconnected")


def new_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def alloc_name(job_id: str, group: str, index: int) -> str:
    return f"{job_id}.{group}[{index}]"


class GroupAsk:
    """What one allocation of a group uses: per-task cpu/memory and the shared disk."""

    __slots__ = ("tasks", "cpu", "memory", "disk")

    def __init__(self, tg: TaskGroup) -> None:
        self.tasks: list[tuple[str, int, int, int]] = []   # (name, cpu, memory, memory_max)
        for t in tg.tasks or []:
            r = t.resources
            self.tasks.append((t.name, (r.cpu or 0) if r else 0, (r.memory_mb or 0) if r else 0,
                               (r.memory_max_mb or 0) if r else 0))
        self.cpu = sum(t[1] for t in self.tasks)
        self.memory = sum(t[2] for t in self.tasks)
        self.disk = (tg.ephemeral_disk.size_mb or 0) if tg.ephemeral_disk else 0


def alloc_usage(alloc: Allocation) -> tuple[int, int, int]:
    """(cpu MHz, memory MB, disk MB) an allocation holds on its node."""
    ar = alloc.allocated_resources
    cpu = mem = 0
    for t in ar.tasks.values():
        cpu += t.cpu.cpu_shares
        mem += t.memory.memory_mb
    return cpu, mem, ar.shared.disk_mb


def node_capacity(node: Node) -> tuple[int, int, int]:
    """(cpu, memory, disk) a node offers: its resources minus what it reserves."""
    nr, rr = node.node_resources, node.reserved_resources
    return (nr.cpu.cpu_shares - rr.cpu.cpu_shares, nr.memory.memory_mb - rr.memory.memory_mb,
            nr.disk.disk_mb - rr.disk.disk_mb)


def last_event_time(alloc: Allocation) -> int:
    """When the allocation last changed on its client (latest task finish, else ModifyTime)."""
    latest = 0
    for ts in alloc.task_states.values():
        t = parse_rfc3339(ts.finished_at)
        if t is not None and t > latest:
            latest = t
    return latest or alloc.modify_time
