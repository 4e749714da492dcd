"""The plan applier: the one place allocations are committed.

Schedulers plan against a snapshot that may be stale by the time the plan arrives. Plans are
checked one at a time: each node's new allocations are re-checked against the latest state
(resources and ports) plus the allocations of the plans checked before and still being written,
and a node that no longer fits is rejected, so the worker re-plans it. The write itself happens
outside the check (as Nomad's applier overlaps one plan's commit with the next one's check), so
plans from several workers are written together when the store commits writes in groups.
"""

from __future__ import annotations

import itertools
import threading
import time

from yurt.scheduler.ports import reserved_ports
from yurt.scheduler.util import alloc_usage, node_capacity
from yurt.structs import Allocation, Evaluation, Plan, PlanResult
from yurt.state import Snapshot, StateStore

REFRESH_WAIT = 10.0   # how long a rejected plan waits for the plans it was checked against


class PlanApplier:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._seq = itertools.count(1)
        # plans checked and being written: their new allocations, by plan, by node
        self._inflight: dict[int, dict[str, list[Allocation]]] = {}

    def apply(self, plan: Plan, evals: list[Evaluation] | None = None) -> PlanResult:
        """`evals` (the eval's outcome) are written with the allocations when no node is rejected."""
        with self._lock:
            snap = self.store.snapshot()
            result = PlanResult()
            for node_id, stops in plan.node_update.items():
                if stops:
                    result.node_update[node_id] = stops
            for node_id, allocs in plan.node_allocation.items():
                if not allocs:
                    continue
                if self._fits(snap, node_id, plan, allocs):
                    result.node_allocation[node_id] = allocs
                else:
                    result.rejected_nodes.append(node_id)
            before = set(self._inflight)
            seq = next(self._seq)
            self._inflight[seq] = result.node_allocation
        try:
            to_write = {a.id: a for v in result.node_update.values() for a in v}
            to_write.update({a.id: a for v in result.node_allocation.values() for a in v})
            for alloc in list(to_write.values()):
                # a replacement points back at what it replaces; the old one learns its successor
                prev_id = alloc.previous_allocation
                prev = to_write.get(prev_id) or (snap.alloc(prev_id) if prev_id else None)
                if prev is not None and prev.next_allocation != alloc.id:
                    to_write[prev_id] = prev.model_copy(update={"next_allocation": alloc.id})
            deployments = ([plan.deployment] if plan.deployment is not None else []) + list(plan.deployment_updates)
            outcome = evals if evals and not result.rejected_nodes else []
            if to_write or deployments or outcome:
                result.alloc_index = self.store.upsert_allocs(list(to_write.values()), deployments, outcome)
        finally:
            with self._lock:
                del self._inflight[seq]
                self._done.notify_all()
                if result.rejected_nodes:
                    # the worker plans again from a refreshed snapshot: one that holds the plans
                    # this one was checked against
                    deadline = time.monotonic() + REFRESH_WAIT
                    while before & self._inflight.keys() and time.monotonic() < deadline:
                        self._done.wait(deadline - time.monotonic())
        result.refresh_index = self.store.index()
        return result

    def _fits(self, snap: Snapshot, node_id: str, plan: Plan, new: list[Allocation]) -> bool:
        """Whether the node's live allocations, but those this plan stops or replaces, plus the
        plans checked before and still being written, plus `new` fit (Nomad's AllocsFit): from
        the store's model of the node (`NodeUsed`), so only what changes is added up."""
        node = snap.node(node_id)
        if node is None or not node.ready():
            return False
        leaving = {a.id for a in plan.node_update.get(node_id, [])} | {a.id for a in new}
        used = snap.node_used(node_id)
        cpu = mem = disk = 0
        ports: dict[int, int] = {}
        if used is not None:
            cpu, mem, disk, ports = used.cpu, used.mem, used.disk, dict(used.ports)
        for alloc_id in leaving:   # live in the snapshot, on this node: counted out
            a = snap.alloc(alloc_id)
            if a is not None and a.node_id == node_id and not a.terminal():
                c, m, d = alloc_usage(a)
                cpu, mem, disk = cpu - c, mem - m, disk - d
                for p in a.allocated_resources.shared.ports:
                    if ports.get(p.value, 0) > 1:
                        ports[p.value] -= 1
                    else:
                        ports.pop(p.value, None)
        reserved = reserved_ports(node)
        if any(n > 1 or port in reserved for port, n in ports.items()):
            return False
        added: list[Allocation] = []
        seen: set[str] = set()
        for placed in self._inflight.values():   # checked before, not in this snapshot yet
            for a in placed.get(node_id, ()):
                if a.id in seen:
                    continue
                seen.add(a.id)
                s = snap.alloc(a.id)
                if s is not None and s.id not in leaving and s.node_id == node_id and not s.terminal():
                    continue    # the snapshot's copy is counted already
                added.append(a)
        cap_cpu, cap_mem, cap_disk = node_capacity(node)
        for a in [*added, *new]:
            if a.terminal():
                continue
            c, m, d = alloc_usage(a)
            cpu, mem, disk = cpu + c, mem + m, disk + d
            for p in a.allocated_resources.shared.ports:
                if p.value in reserved or p.value in ports:
                    return False     # a port collision
                ports[p.value] = 1
        return cpu <= cap_cpu and mem <= cap_mem and disk <= cap_disk
