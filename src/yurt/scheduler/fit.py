"""Whether a set of allocations fits on a node (Nomad structs/funcs.go AllocsFit).

Used by the scheduler's own bookkeeping and by the server's plan applier, which re-checks every
node of a plan against the latest state before committing it.
"""

from __future__ import annotations

from collections.abc import Iterable

from yurt.structs import Allocation, Node

from .ports import port_collisions
from .util import alloc_usage, node_capacity


def allocs_fit(node: Node, allocs: Iterable[Allocation]) -> tuple[bool, str]:
    """``(True, "")`` when the non-terminal ``allocs`` fit together on ``node``, else
    ``(False, dimension)`` with dimension "cpu", "memory", "disk" or
    "network: reserved port collision <label>=<port>"."""
    live = [a for a in allocs if not a.terminal()]
    cap_cpu, cap_mem, cap_disk = node_capacity(node)
    cpu = mem = disk = 0
    for a in live:
        c, m, d = alloc_usage(a)
        cpu += c
        mem += m
        disk += d
    if cpu > cap_cpu:
        return False, "cpu"
    if mem > cap_mem:
        return False, "memory"
    if disk > cap_disk:
        return False, "disk"
    collisions = port_collisions(node, live)
    if collisions:
        return False, f"network: reserved port collision {collisions[0]}"
    return True, ""
