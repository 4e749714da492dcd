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

from yurt.scheduler import allocs_fit
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
        node = snap.node(node_id)
        if node is None or not node.ready():
            return False
        leaving = {a.id for a in plan.node_update.get(node_id, [])} | {a.id for a in new}
        existing = {a.id: a for a in snap.allocs_by_node(node_id) if a.id not in leaving}
        for placed in self._inflight.values():   # checked before, not in this snapshot yet
            for a in placed.get(node_id, ()):
                existing.setdefault(a.id, a)
        ok, _ = allocs_fit(node, list(existing.values()) + new)  # cpu, memory, disk and port collisions
        return ok
