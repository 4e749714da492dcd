"""The plan applier: the one place allocations are committed.

Schedulers plan against a snapshot that may be stale by the time the plan arrives. Plans are
applied one at a time; each node's new allocations are re-checked against the latest state
(resources and ports), and a node that no longer fits is rejected, so the worker re-plans it.
"""

from __future__ import annotations

import threading

from yurt.scheduler import allocs_fit
from yurt.structs import Allocation, Evaluation, Plan, PlanResult
from yurt.state import Snapshot, StateStore


class PlanApplier:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._lock = threading.Lock()

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
            result.refresh_index = self.store.index()
            return result

    @staticmethod
    def _fits(snap: Snapshot, node_id: str, plan: Plan, new: list[Allocation]) -> bool:
        node = snap.node(node_id)
        if node is None or not node.ready():
            return False
        leaving = {a.id for a in plan.node_update.get(node_id, [])} | {a.id for a in new}
        existing = [a for a in snap.allocs_by_node(node_id) if a.id not in leaving]
        ok, _ = allocs_fit(node, existing + new)  # cpu, memory, disk and port collisions
        return ok
