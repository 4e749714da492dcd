"""The in-memory read model: plain dicts, copied on the first write after a snapshot.

`Tables` holds every table and secondary index as dicts. A snapshot (`freeze()`) is a shallow
copy of the references, after which the live tables own nothing: the next write to a table
copies its top-level dict (and, for a dict-of-dicts index, only the buckets it touches) before
changing it. So a snapshot costs O(number of tables), the first write after it O(rows in the
tables it touches), and writes with no snapshot in between copy nothing.

Stored objects are never mutated once they are in a table; a write replaces them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from yurt.structs import (ACLPolicy, ACLToken, Allocation, CAState, Deployment, Evaluation, Intention, Job, Node,
                          NodeUsed, ServiceRegistration)

from .keyed import KEYED

JobKey = tuple[str, str]            # (namespace, job id)
VersionKey = tuple[str, str, int]   # (namespace, job id, JobModifyIndex of that version)
CountKey = tuple[str, str, int]     # (namespace, job id, the job's CreateIndex)

ServiceKey = tuple[str, str]        # (node ID or name, service ID)

# "ca" is the CA's state (roots, config); "ca_serial" its certificate serial counter, apart so
# that signing a leaf does not wake everyone watching the roots.
NODE_ALLOCS = "allocs@"
"""A blocking-query target for one node's allocations: NODE_ALLOCS + the node's ID."""
TABLES = ("jobs", "evals", "allocs", "nodes", "services", "intentions", "ca", "ca_serial", "acl",
          "deployment") + tuple(KEYED)

_TOP = ("jobs", "versions", "job_cache", "evals", "evals_by_job", "allocs", "allocs_by_job",
        "allocs_by_node", "allocs_by_eval", "nodes", "counts", "services", "services_by_name",
        "services_by_dest", "services_by_alloc", "services_by_node", "intentions", "acl_policies",
        "acl_tokens", "deployments", "deployments_by_job", "node_usage", "keyed")
_NESTED = ("versions", "evals_by_job", "allocs_by_job", "allocs_by_node", "allocs_by_eval",
           "services_by_name", "services_by_dest", "services_by_alloc", "services_by_node",
           "deployments_by_job", "keyed")


def job_key(job: Job) -> JobKey:
    return (job.namespace or "default", job.id)


def version_key(job: Job) -> VersionKey:
    return (job.namespace or "default", job.id, job.job_modify_index)


def count_key(alloc: Allocation) -> CountKey:
    return (alloc.namespace, alloc.job_id, alloc.job.create_index if alloc.job is not None else 0)


class AllocCounts:
    """Per job incarnation: allocations in all, non-terminal ones, per group per client status."""

    __slots__ = ("total", "live", "groups", "modify_index")

    def __init__(self) -> None:
        self.total = 0
        self.live = 0
        self.groups: dict[str, dict[str, int]] = {}
        self.modify_index = 0  # the last index at which one of these allocations changed

    def copy(self) -> AllocCounts:
        c = AllocCounts()
        c.total, c.live, c.modify_index = self.total, self.live, self.modify_index
        c.groups = {g: dict(s) for g, s in self.groups.items()}
        return c

    def add(self, alloc: Allocation, sign: int) -> None:
        self.total += sign
        if not alloc.terminal():
            self.live += sign
        g = self.groups.setdefault(alloc.task_group, {})
        g[alloc.client_status] = g.get(alloc.client_status, 0) + sign


class Tables:
    """Every table and index of the read model. See the module doc for the copy rules."""

    def __init__(self) -> None:
        self.index = 0
        self.table_index: dict[str, int] = {t: 0 for t in TABLES}
        self.jobs: dict[JobKey, Job] = {}
        self.versions: dict[JobKey, dict[int, Job]] = {}      # live versions by Version
        self.job_cache: dict[VersionKey, Job] = {}            # every kept version, purged too
        self.evals: dict[str, Evaluation] = {}
        self.evals_by_job: dict[JobKey, dict[str, Evaluation]] = {}
        self.allocs: dict[str, Allocation] = {}
        self.allocs_by_job: dict[JobKey, dict[str, Allocation]] = {}
        self.allocs_by_node: dict[str, dict[str, Allocation]] = {}
        self.allocs_by_eval: dict[str, dict[str, Allocation]] = {}
        self.nodes: dict[str, Node] = {}
        self.counts: dict[CountKey, AllocCounts] = {}
        self.services: dict[ServiceKey, ServiceRegistration] = {}
        self.services_by_name: dict[str, dict[ServiceKey, ServiceRegistration]] = {}
        self.services_by_dest: dict[str, dict[ServiceKey, ServiceRegistration]] = {}
        self.services_by_alloc: dict[str, dict[ServiceKey, ServiceRegistration]] = {}
        self.services_by_node: dict[str, dict[ServiceKey, ServiceRegistration]] = {}
        self.intentions: dict[str, Intention] = {}
        self.ca_state: CAState | None = None   # replaced whole on write, never mutated
        self.ca_serial = 0
        self.acl_policies: dict[str, ACLPolicy] = {}
        self.acl_tokens: dict[str, ACLToken] = {}           # by AccessorID
        self.acl_bootstrap = 0                              # the index of the bootstrap; 0: not done
        self.deployments: dict[str, Deployment] = {}
        self.deployments_by_job: dict[JobKey, dict[str, Deployment]] = {}
        self.keyed: dict[str, dict[str, BaseModel]] = {}    # keyed tables (state/keyed.py): table -> key -> row
        self._owned: set[str] = set(_TOP)
        self.node_usage: dict[str, NodeUsed] = {}          # what each node's non-terminal allocations hold
        self._owned_keys: dict[str, set[Any]] = {n: set() for n in _NESTED + ("counts", "node_usage")}
        self._all_owned = True
        # Blocking queries on one node's allocations (the client agent's watch): the index of
        # the last write that changed an allocation on each node, kept on the live tables only.
        # A node not in it had no change since `node_allocs_base` (the allocs index at load).
        # A write wakes the watches of the nodes it touched, not the whole fleet's.
        self.node_allocs_index: dict[str, int] = {}
        self.node_allocs_base = 0

    # --- snapshots -----------------------------------------------------------------------------

    def freeze(self) -> Tables:
        """A read-only copy sharing every dict; the live tables copy before their next write."""
        snap = Tables.__new__(Tables)
        snap.index = self.index
        snap.table_index = dict(self.table_index)
        for name in _TOP:
            setattr(snap, name, getattr(self, name))
        snap.ca_state, snap.ca_serial = self.ca_state, self.ca_serial
        snap.acl_bootstrap = self.acl_bootstrap
        snap.node_allocs_index, snap.node_allocs_base = {}, self.table_index.get("allocs", 0)
        snap._owned, snap._owned_keys, snap._all_owned = set(), {}, False
        self._owned = set()
        for keys in self._owned_keys.values():
            keys.clear()
        self._all_owned = False
        return snap

    def _top(self, name: str) -> dict:
        d = getattr(self, name)
        if self._all_owned or name in self._owned:
            return d
        d = dict(d)
        setattr(self, name, d)
        self._owned.add(name)
        return d

    def _bucket(self, name: str, key: Any) -> dict:
        top = self._top(name)
        b = top.get(key)
        if b is None:
            b = top[key] = {}
            self._owned_keys[name].add(key)
        elif not self._all_owned and key not in self._owned_keys[name]:
            b = top[key] = dict(b)
            self._owned_keys[name].add(key)
        return b

    def _unbucket(self, name: str, key: Any, item: Any) -> None:
        b = self._bucket(name, key)
        b.pop(item, None)
        if not b:
            del getattr(self, name)[key]

    def _count(self, key: CountKey) -> AllocCounts:
        top = self._top("counts")
        c = top.get(key)
        if c is None:
            c = top[key] = AllocCounts()
            self._owned_keys["counts"].add(key)
        elif not self._all_owned and key not in self._owned_keys["counts"]:
            c = top[key] = c.copy()
            self._owned_keys["counts"].add(key)
        return c

    def _used(self, node_id: str) -> NodeUsed:
        top = self._top("node_usage")
        u = top.get(node_id)
        if u is None:
            u = top[node_id] = NodeUsed()
            self._owned_keys["node_usage"].add(node_id)
        elif not self._all_owned and node_id not in self._owned_keys["node_usage"]:
            u = top[node_id] = u.copy()
            self._owned_keys["node_usage"].add(node_id)
        return u

    # --- writes (called with the store's memory lock held, after the SQLite commit) -------------

    def put_job(self, job: Job) -> None:
        self._top("jobs")[job_key(job)] = job

    def drop_job(self, key: JobKey) -> None:
        self._top("jobs").pop(key, None)
        self._top("versions").pop(key, None)

    def put_version(self, job: Job) -> None:
        self._bucket("versions", job_key(job))[job.version] = job
        self._top("job_cache")[version_key(job)] = job

    def is_live_version(self, vkey: VersionKey) -> bool:
        """Listed by job_versions (not purged)."""
        job = self.job_cache.get(vkey)
        return job is not None and self.versions.get(vkey[:2], {}).get(job.version) is job

    def hide_version(self, vkey: VersionKey) -> None:
        """Purged but still referenced by allocations: kept in the cache only."""
        if self.is_live_version(vkey):
            self._unbucket("versions", vkey[:2], self.job_cache[vkey].version)

    def drop_version(self, vkey: VersionKey) -> None:
        self.hide_version(vkey)
        self._top("job_cache").pop(vkey, None)

    def put_eval(self, ev: Evaluation) -> None:
        self._top("evals")[ev.id] = ev
        self._bucket("evals_by_job", (ev.namespace, ev.job_id))[ev.id] = ev

    def drop_eval(self, eval_id: str) -> None:
        ev = self._top("evals").pop(eval_id, None)
        if ev is not None:
            self._unbucket("evals_by_job", (ev.namespace, ev.job_id), eval_id)

    def put_alloc(self, alloc: Allocation) -> None:
        old = self.allocs.get(alloc.id)
        if old is not None:
            self._unindex_alloc(old)
        self._top("allocs")[alloc.id] = alloc
        self._bucket("allocs_by_job", (alloc.namespace, alloc.job_id))[alloc.id] = alloc
        self._bucket("allocs_by_node", alloc.node_id)[alloc.id] = alloc
        self._bucket("allocs_by_eval", alloc.eval_id)[alloc.id] = alloc
        c = self._count(count_key(alloc))
        c.add(alloc, 1)
        c.modify_index = max(c.modify_index, alloc.modify_index)
        if not alloc.terminal():
            self._used(alloc.node_id).add(alloc, 1)

    def drop_alloc(self, alloc_id: str) -> None:
        old = self._top("allocs").pop(alloc_id, None)
        if old is not None:
            self._unindex_alloc(old)

    def _unindex_alloc(self, old: Allocation) -> None:
        self._unbucket("allocs_by_job", (old.namespace, old.job_id), old.id)
        self._unbucket("allocs_by_node", old.node_id, old.id)
        self._unbucket("allocs_by_eval", old.eval_id, old.id)
        key = count_key(old)
        c = self._count(key)
        c.add(old, -1)
        c.modify_index = self.index
        if c.total == 0:
            del self.counts[key]
        if not old.terminal():
            u = self._used(old.node_id)
            u.add(old, -1)
            if u.count == 0:
                del self.node_usage[old.node_id]

    def put_node(self, node: Node) -> None:
        self._top("nodes")[node.id] = node

    def drop_node(self, node_id: str) -> None:
        self._top("nodes").pop(node_id, None)

    # --- catalog, intentions, CA ---------------------------------------------------------------

    def put_service(self, svc: ServiceRegistration) -> None:
        old = self.services.get(svc.key)
        if old is not None:
            self._unindex_service(old)
        self._top("services")[svc.key] = svc
        self._bucket("services_by_name", svc.service)[svc.key] = svc
        self._bucket("services_by_node", svc.key[0])[svc.key] = svc
        for dest in svc.connect_destinations:
            self._bucket("services_by_dest", dest)[svc.key] = svc
        if svc.alloc_id:
            self._bucket("services_by_alloc", svc.alloc_id)[svc.key] = svc

    def drop_service(self, key: ServiceKey) -> None:
        old = self._top("services").pop(key, None)
        if old is not None:
            self._unindex_service(old)

    def _unindex_service(self, old: ServiceRegistration) -> None:
        self._unbucket("services_by_name", old.service, old.key)
        self._unbucket("services_by_node", old.key[0], old.key)
        for dest in old.connect_destinations:
            self._unbucket("services_by_dest", dest, old.key)
        if old.alloc_id:
            self._unbucket("services_by_alloc", old.alloc_id, old.key)

    def put_intention(self, ix: Intention) -> None:
        self._top("intentions")[ix.id] = ix

    def drop_intention(self, ix_id: str) -> None:
        self._top("intentions").pop(ix_id, None)

    # --- ACL -------------------------------------------------------------------------------------

    def put_acl_policy(self, p: ACLPolicy) -> None:
        self._top("acl_policies")[p.name] = p

    def drop_acl_policy(self, name: str) -> None:
        self._top("acl_policies").pop(name, None)

    def put_deployment(self, d: Deployment) -> None:
        self._top("deployments")[d.id] = d
        self._bucket("deployments_by_job", (d.namespace, d.job_id))[d.id] = d

    def drop_deployment(self, deployment_id: str) -> None:
        old = self._top("deployments").pop(deployment_id, None)
        if old is not None:
            self._unbucket("deployments_by_job", (old.namespace, old.job_id), deployment_id)

    def put_acl_token(self, t: ACLToken) -> None:
        self._top("acl_tokens")[t.accessor_id] = t

    def drop_acl_token(self, accessor: str) -> None:
        self._top("acl_tokens").pop(accessor, None)

    # --- keyed tables --------------------------------------------------------------------------

    def put_keyed(self, table: str, key: str, row: BaseModel) -> None:
        self._bucket("keyed", table)[key] = row

    def drop_keyed(self, table: str, key: str) -> None:
        if key in self.keyed.get(table, {}):
            self._unbucket("keyed", table, key)
