"""A SchedulerState in plain dicts, for the scheduler's tests and benches (after Nomad's
in-memory state in scheduler tests): ``apply_plan`` does what the plan applier does."""

from __future__ import annotations

from collections.abc import Iterable

from yurt.structs import Allocation, Deployment, Job, Node, NodeUsed, Plan


class MemoryState:
    """A SchedulerState in memory."""

    def __init__(self, nodes: Iterable[Node] = (), jobs: Iterable[Job] = (),
                 allocs: Iterable[Allocation] = (), index: int = 1) -> None:
        self.index = index
        self._nodes: dict[str, Node] = {}
        self._node_list: list[Node] | None = None
        self._jobs: dict[tuple[str, str], Job] = {}
        self._allocs: dict[str, Allocation] = {}
        self._by_job: dict[tuple[str, str], dict[str, Allocation]] = {}
        self._by_node: dict[str, dict[str, Allocation]] = {}
        self._deployments: dict[str, Deployment] = {}
        self._used: dict[str, NodeUsed | None] = {}
        for n in nodes:
            self.upsert_node(n)
        for j in jobs:
            self.upsert_job(j)
        for a in allocs:
            self.upsert_alloc(a)

    # --- the view -----------------------------------------------------------------------------
    def job(self, namespace: str, job_id: str) -> Job | None:
        return self._jobs.get((namespace, job_id))

    def node_used(self, node_id: str) -> NodeUsed | None:
        """Kept per node until an allocation on it is written, as the store keeps it (the
        scheduler shares its view of a node while this object stays the same)."""
        if node_id in self._used:
            return self._used[node_id]
        used = NodeUsed()
        for a in self._by_node.get(node_id, {}).values():
            if not a.terminal():
                used.add(a, 1)
        self._used[node_id] = answer = used if used.count else None
        return answer

    def nodes(self) -> list[Node]:
        if self._node_list is None:
            self._node_list = list(self._nodes.values())
        return self._node_list

    def node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def allocs_by_job(self, namespace: str, job_id: str) -> list[Allocation]:
        return list(self._by_job.get((namespace, job_id), {}).values())

    def allocs_by_node(self, node_id: str) -> list[Allocation]:
        return list(self._by_node.get(node_id, {}).values())

    def alloc(self, alloc_id: str) -> Allocation | None:
        return self._allocs.get(alloc_id)

    def latest_deployment(self, namespace: str, job_id: str) -> Deployment | None:
        mine = [d for d in self._deployments.values() if (d.namespace, d.job_id) == (namespace, job_id)]
        return max(mine, key=lambda d: d.create_index) if mine else None

    def upsert_deployment(self, d: Deployment) -> None:
        self.index += 1
        if not d.create_index:
            d = d.model_copy(update={"create_index": self.index})
        self._deployments[d.id] = d.model_copy(update={"modify_index": self.index})

    # --- writes -------------------------------------------------------------------------------
    def upsert_node(self, node: Node) -> None:
        self._nodes[node.id] = node
        self._node_list = None
        self.index += 1

    def upsert_job(self, job: Job) -> None:
        self._jobs[(job.namespace or "default", job.id)] = job
        self.index += 1

    def upsert_alloc(self, alloc: Allocation) -> None:
        old = self._allocs.get(alloc.id)
        self._used.pop(alloc.node_id, None)
        if old is not None:
            self._used.pop(old.node_id, None)
        if old is not None and old.node_id != alloc.node_id:
            self._by_node.get(old.node_id, {}).pop(alloc.id, None)
        self._allocs[alloc.id] = alloc
        self._by_job.setdefault((alloc.namespace, alloc.job_id), {})[alloc.id] = alloc
        on_node = self._by_node.setdefault(alloc.node_id, {})
        if alloc.terminal():
            on_node.pop(alloc.id, None)
        else:
            on_node[alloc.id] = alloc

    def apply_plan(self, plan: Plan) -> None:
        """Commit a plan as a plan applier would (no re-check): deployments, stops, then placements
        (the store's deployment counts are not kept here)."""
        for d in ([plan.deployment] if plan.deployment else []) + list(plan.deployment_updates or []):
            old = self._deployments.get(d.id)
            self.upsert_deployment(d.model_copy(update={"create_index": old.create_index}) if old else d)
        self.index += 1
        for allocs in plan.node_update.values():
            for a in allocs:
                a.modify_index = self.index
                self.upsert_alloc(a)
        for allocs in plan.node_allocation.values():
            for a in allocs:
                if not a.create_index:
                    a.create_index = self.index
                a.modify_index = a.alloc_modify_index = self.index
                self.upsert_alloc(a)
                if a.previous_allocation:
                    prev = self._allocs.get(a.previous_allocation)
                    if prev is not None and prev.id != a.id and not prev.next_allocation:
                        self.upsert_alloc(prev.model_copy(update={"next_allocation": a.id}))
