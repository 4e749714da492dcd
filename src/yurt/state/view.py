"""Reads over a `Tables`: the same code serves the live store and its snapshots.

Everything returned is the stored object itself (no copies, for speed): callers must not mutate
it; to change one, `obj.model_copy(update={...})` (or `model_copy(deep=True)`) and write that.
List reads return new lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from yurt.structs import Allocation, Deployment, Evaluation, Job, JobSummary, Node, NodeUsed

from . import derive
from .memory import Tables
from .mesh_view import MeshView


def _ids(d: dict, prefix: str) -> list:
    if prefix:
        return sorted(k for k in d if k.startswith(prefix))
    return sorted(d)


def _filter_terminal(allocs: Iterable[Allocation], terminal: bool | None) -> list[Allocation]:
    if terminal is None:
        return list(allocs)
    return [a for a in allocs if a.terminal() is terminal]


class StateView(MeshView):
    """Read-only access to one `Tables` (live, or frozen for a snapshot)."""

    def __init__(self, tables: Tables) -> None:
        self._t = tables

    # --- indexes -------------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self._t.index

    def table_index(self, table: str | Iterable[str]) -> int:
        """The last index at which a row of `table` ("jobs", "evals", "allocs", "nodes") changed,
        or the largest over several tables."""
        if isinstance(table, str):
            return self._t.table_index[table]
        return max(self._t.table_index[t] for t in table)

    # --- jobs ----------------------------------------------------------------------------------

    def job(self, namespace: str, job_id: str) -> Job | None:
        return self._t.jobs.get((namespace, job_id))

    def jobs(self, namespace: str | None = None, prefix: str = "") -> list[Job]:
        """Jobs in ID order (namespace then ID); all namespaces when `namespace` is None or "*"."""
        t = self._t.jobs
        keys = sorted(k for k in t if (namespace in (None, "*") or k[0] == namespace)
                      and k[1].startswith(prefix))
        return [t[k] for k in keys]

    def job_version(self, namespace: str, job_id: str, version: int) -> Job | None:
        return self._t.versions.get((namespace, job_id), {}).get(version)

    def job_versions(self, namespace: str, job_id: str) -> list[Job]:
        """Every kept version, newest first."""
        b = self._t.versions.get((namespace, job_id), {})
        return [b[v] for v in sorted(b, reverse=True)]

    def job_summary(self, namespace: str, job_id: str) -> JobSummary | None:
        job = self.job(namespace, job_id)
        if job is None:
            return None
        counts = self._t.counts.get((namespace, job_id, job.create_index))
        evals = list(self._t.evals_by_job.get((namespace, job_id), {}).values())
        modify = max([job.modify_index, counts.modify_index if counts else 0]
                     + [e.modify_index for e in evals])
        return derive.job_summary(job, counts, evals, modify)

    # --- evaluations ---------------------------------------------------------------------------

    def eval(self, eval_id: str) -> Evaluation | None:
        return self._t.evals.get(eval_id)

    def evals(self, namespace: str | None = None, job_id: str | None = None,
              prefix: str = "") -> list[Evaluation]:
        """Evaluations in ID order, optionally of one job or with an ID prefix."""
        if job_id is not None:
            return sorted(self.evals_by_job(namespace or "default", job_id), key=lambda e: e.id)
        t = self._t.evals
        out = [t[k] for k in _ids(t, prefix)]
        if namespace not in (None, "*"):
            out = [e for e in out if e.namespace == namespace]
        return out

    def evals_by_job(self, namespace: str, job_id: str) -> list[Evaluation]:
        return list(self._t.evals_by_job.get((namespace, job_id), {}).values())

    # --- allocations ---------------------------------------------------------------------------

    def alloc(self, alloc_id: str) -> Allocation | None:
        return self._t.allocs.get(alloc_id)

    def allocs(self, prefix: str = "", namespace: str | None = None) -> list[Allocation]:
        """Allocations in ID order, optionally those whose ID starts with `prefix`."""
        t = self._t.allocs
        out = [t[k] for k in _ids(t, prefix)]
        if namespace not in (None, "*"):
            out = [a for a in out if a.namespace == namespace]
        return out

    def allocs_by_job(self, namespace: str, job_id: str, all_versions: bool = True) -> list[Allocation]:
        """The job's allocations. `all_versions=False` keeps only those of the job as registered
        now (same CreateIndex), dropping allocations of an earlier job of that ID that was purged
        and registered again -- Nomad's `?all=false` / AllocsByJob(anyCreateIndex=false)."""
        allocs = self._t.allocs_by_job.get((namespace, job_id), {}).values()
        if all_versions:
            return list(allocs)
        job = self.job(namespace, job_id)
        if job is None:
            return []
        return [a for a in allocs if a.job is not None and a.job.create_index == job.create_index]

    def allocs_by_node(self, node_id: str, terminal: bool | None = None) -> list[Allocation]:
        """The node's allocations: all (None), only non-terminal (False) or only terminal (True)."""
        return _filter_terminal(self._t.allocs_by_node.get(node_id, {}).values(), terminal)

    def allocs_by_eval(self, eval_id: str) -> list[Allocation]:
        return list(self._t.allocs_by_eval.get(eval_id, {}).values())

    # --- nodes ---------------------------------------------------------------------------------

    # --- deployments ---------------------------------------------------------------------------

    def deployment(self, deployment_id: str) -> Deployment | None:
        return self._t.deployments.get(deployment_id)

    def deployments(self, namespace: str | None = None, prefix: str = "") -> list[Deployment]:
        """By CreateIndex, newest last."""
        out = [d for d in self._t.deployments.values() if d.id.startswith(prefix)
               and namespace in (None, "*", d.namespace)]
        return sorted(out, key=lambda d: (d.create_index, d.id))

    def deployments_by_job(self, namespace: str, job_id: str) -> list[Deployment]:
        """A job's deployments, newest first (Nomad's order)."""
        out = self._t.deployments_by_job.get((namespace, job_id), {}).values()
        return sorted(out, key=lambda d: (-d.create_index, d.id))

    def latest_deployment(self, namespace: str, job_id: str) -> Deployment | None:
        ds = self.deployments_by_job(namespace, job_id)
        return ds[0] if ds else None

    def node(self, node_id: str) -> Node | None:
        return self._t.nodes.get(node_id)

    def nodes(self, prefix: str = "") -> list[Node]:
        t = self._t.nodes
        return [t[k] for k in _ids(t, prefix)]


_nodes_of: tuple[dict, list[Node]] | None = None
"""The last snapshot's node list, with the nodes dict it was made from. A frozen dict is never
written again (the live tables copy before their next write), so while no node changes every
snapshot shares one list: the scheduler sorts 5,000 nodes once, not once per evaluation."""


class Snapshot(StateView):
    """A consistent read-only view of the store at `index`; later writes are not visible.

    It is what the scheduler reads (it satisfies `yurt.scheduler.state.SchedulerState`), so two
    defaults differ from the store's: `allocs_by_node(node_id)` returns only the allocations
    that still hold resources (non-terminal; pass `terminal=None` for all), and `nodes()` (no
    prefix) is computed once and the same list returned each time -- do not mutate it.
    """

    def __init__(self, tables: Tables) -> None:
        super().__init__(tables)
        self._nodes: list[Node] | None = None

    def allocs_by_node(self, node_id: str, terminal: bool | None = False) -> list[Allocation]:
        return super().allocs_by_node(node_id, terminal)

    def node_used(self, node_id: str) -> NodeUsed | None:
        return self._t.node_usage.get(node_id)

    def nodes(self, prefix: str = "") -> list[Node]:
        if prefix:
            return super().nodes(prefix)
        if self._nodes is None:
            global _nodes_of
            cached, source = _nodes_of, self._t.nodes
            if cached is not None and cached[0] is source:
                self._nodes = cached[1]
            else:
                self._nodes = super().nodes()
                _nodes_of = (source, self._nodes)
        return self._nodes
