"""StateStore: the server's store -- SQLite for durability, dicts for reads.

* One index, like Raft's: every write is one SQLite transaction that bumps it by exactly one and
  stamps CreateIndex/ModifyIndex (and AllocModifyIndex, JobModifyIndex, Version, times) on what
  it writes; a write that raises writes nothing and bumps nothing. Reads never bump it.
* Reads come from an in-memory model loaded at open and updated after each commit; they return
  the stored objects themselves: do not mutate them (copy with `model_copy(update=...)`).
* `snapshot()` is a consistent read-only view for the scheduler (copy-on-write; see memory.py).
* `wait()` / `wait_async()` are blocking queries on the index or a table's index.
* Durability: see sqlite_backend.py (WAL, synchronous=NORMAL: a killed process loses nothing
  committed; FULL adds power-loss durability).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from yurt.errors import InvalidInput
from yurt.structs import (AllocDeploymentStatus, Allocation, Deployment, DesiredTransition, Evaluation, Job,
                          JobSummary, Node)

from . import derive
from .blocking import Target, Waiters
from .errors import NotFound
from .events import EventBuffer
from .keyed_store import KeyedStore
from .memory import NODE_ALLOCS, TABLES, Tables, job_key, version_key
from .acl_store import ACLStore
from .mesh_store import MeshStore
from .sqlite_backend import Changes, SqliteBackend
from .view import Snapshot, StateView
from .writes import Txn

K = TypeVar("K")
T = TypeVar("T")
V = TypeVar("V")


class _Unchanged(Exception):
    """Raised inside a write that turns out to change nothing: it is dropped, not committed."""


class StateStore(MeshStore, ACLStore, KeyedStore):
    # the event stream's buffer (`events.py`); None: no events are kept (enable_event_broker = false)
    events: EventBuffer | None = None

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._backend = SqliteBackend(path, synchronous)
        self._write_lock = threading.Lock()   # serializes writers (SQLite + memory)
        self._mem_lock = threading.Lock()     # guards the read model; held briefly
        self._t = Tables()
        self._view = StateView(self._t)
        self._snap: Snapshot | None = None
        self._tmpdir: str | None = None
        self._load()
        self._waiters = Waiters(self._mem_lock, self._current, NODE_ALLOCS)

    @classmethod
    def temporary(cls, **kw: Any) -> StateStore:
        """A store in a fresh temporary directory, removed by close() (for `-dev`)."""
        d = tempfile.mkdtemp(prefix="yurt-state-")
        store = cls(os.path.join(d, "state.db"), **kw)
        store._tmpdir = d
        return store

    def close(self) -> None:
        with self._write_lock:
            self._backend.close()
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- open ----------------------------------------------------------------------------------

    def _load(self) -> None:
        # Loading creates many long-lived objects; the cyclic GC would rescan them over and
        # over (it more than doubles the load time), and there are no cycles to find here.
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._load_tables()
        finally:
            if enabled:
                gc.enable()

    def _load_tables(self) -> None:
        loaded = self._backend.load()
        t = self._t
        t.index = loaded.index
        t.table_index = loaded.table_index
        t.node_allocs_base = t.table_index.get("allocs", 0)
        for job, _purged in loaded.versions:
            t.put_version(job)
        for job, purged in loaded.versions:
            if purged:
                t.hide_version(version_key(job))
        for job in loaded.jobs:
            t.put_job(job)
        for ev in loaded.evals:
            t.put_eval(ev)
        for node in loaded.nodes:
            t.put_node(node)
        for alloc, vkey in loaded.allocs:
            if alloc.job is None:
                alloc.job = t.job_cache.get(vkey)  # not shared yet: setting is fine
            t.put_alloc(alloc)
        for svc in loaded.services:
            t.put_service(svc)
        for ix in loaded.intentions:
            t.put_intention(ix)
        t.ca_state, t.ca_serial = loaded.ca_state, loaded.ca_serial
        for p in loaded.acl_policies:
            t.put_acl_policy(p)
        for tok in loaded.acl_tokens:
            t.put_acl_token(tok)
        t.acl_bootstrap = loaded.acl_bootstrap
        for d in loaded.deployments:
            t.put_deployment(d)
        for tbl, krows in loaded.keyed.items():
            for rkey, row in krows.items():
                t.put_keyed(tbl, rkey, row)
        for key, job in list(t.jobs.items()):  # status is stored, but heal it if it drifted
            counts = t.counts.get((key[0], key[1], job.create_index))
            status = derive.job_status(job, counts, t.evals_by_job.get(key, {}).values())
            if status != job.status and not (status == derive.JOB_PENDING and job.status == derive.JOB_DEAD):
                t.put_job(job.model_copy(update={"status": status}))

    # --- writing -------------------------------------------------------------------------------

    def _write(self, build: Callable[[Txn], object]) -> int:
        with self._write_lock:
            txn = Txn(self._t, self._t.index + 1, time.time_ns())
            build(txn)
            ch = txn.finish()
            table_index = dict(self._t.table_index)
            for name in ch.tables():
                table_index[name] = ch.index
            self._backend.commit(ch, table_index)
            with self._mem_lock:
                nodes = self._apply(ch, table_index)
                self._snap = None
                self._waiters.notify(nodes)
            return ch.index

    def _apply(self, ch: Changes, table_index: dict[str, int]) -> set[str]:
        """Apply one write; the IDs of the nodes whose allocations it changed."""
        if self.events is not None:   # before the model changes: it records the rows replaced
            self.events.capture(ch, self._t)
        return apply_changes(self._t, ch, table_index)

    def fixed(self, obj: T, index: int) -> T:
        """An object a write returns, as stored at `index` (here: as it is; the etcd store fills
        in the indexes that only the commit knows)."""
        return obj

    # --- jobs ----------------------------------------------------------------------------------

    def upsert_job(self, job: Job) -> int:
        """Register a job. A changed spec is a new Version (JobModifyIndex = this index); an
        identical one keeps Version and JobModifyIndex and only gets a new ModifyIndex."""
        return self._write(lambda txn: txn.upsert_job(job))

    def register_job(self, job: Job, ev: Evaluation | None, *,
                     expect_modify_index: int | None = None) -> tuple[int, Evaluation | None]:
        """`upsert_job(job)` and the evaluation that schedules it, in one transaction: a crash
        never leaves a stored job (or a stopped one) that no evaluation will act on. The eval
        gets the stored job's JobModifyIndex; returns (index, the eval as stored).

        `expect_modify_index` (Nomad's EnforceIndex): write only if the job's JobModifyIndex is
        still that (0: the job must not exist), checked inside the same transaction."""
        stored: list[Evaluation] = []

        def build(txn: Txn) -> None:
            if expect_modify_index is not None:
                current = txn.job(job_key(job))
                have = current.job_modify_index if current else 0
                if expect_modify_index == 0 and current is not None:
                    raise InvalidInput(f"Enforcing job modify index 0: job {job.id} already exists")
                if expect_modify_index != have:
                    raise InvalidInput(f"Enforcing job modify index {expect_modify_index}: job exists with "
                                     f"conflicting job modify index: {have}")
            new = txn.upsert_job(job)
            if ev is not None:   # None: a periodic or parameterized parent, never evaluated itself
                stored.append(txn.upsert_eval(ev.model_copy(update={"job_modify_index": new.job_modify_index})))
        index = self._write(build)
        return index, (self.fixed(stored[0], index) if stored else None)

    def purge_job(self, namespace: str, job_id: str, ev: Evaluation) -> int:
        """`delete_job` and the evaluation that stops its allocations, in one transaction."""
        def build(txn: Txn) -> None:
            txn.delete_job((namespace, job_id))
            txn.upsert_eval(ev)
        return self._write(build)

    def stop_job(self, namespace: str, job_id: str, stop: bool = True) -> int:
        """Set (or clear) Stop; like Nomad, stopping is a spec change, hence a new version."""
        def build(txn: Txn) -> None:
            job = txn.job((namespace, job_id))
            if job is None:
                raise NotFound(f"job {job_id!r} not found in namespace {namespace!r}")
            txn.upsert_job(job.model_copy(update={"stop": stop}))
        return self._write(build)

    def delete_job(self, namespace: str, job_id: str) -> int:
        """Purge: the job, its versions and its summary go; allocations and evals stay (GC)."""
        return self._write(lambda txn: txn.delete_job((namespace, job_id)))

    # --- evaluations ---------------------------------------------------------------------------

    def upsert_evals(self, evals: Iterable[Evaluation]) -> int:
        def build(txn: Txn) -> None:
            for e in evals:
                txn.upsert_eval(e)
        return self._write(build)

    def delete_evals(self, eval_ids: Iterable[str], alloc_ids: Iterable[str] = ()) -> int:
        """Garbage collection (Nomad's DeleteEval): evaluations and allocations, unknown IDs
        ignored."""
        def build(txn: Txn) -> None:
            for i in eval_ids:
                txn.delete_eval(i)
            for i in alloc_ids:
                txn.delete_alloc(i)
        return self._write(build)

    # --- allocations ---------------------------------------------------------------------------

    def upsert_allocs(self, allocs: Iterable[Allocation], deployments: Iterable[Deployment] = (),
                      evals: Iterable[Evaluation] = ()) -> int:
        """Server writes. New allocations need a job; on existing ones the client's fields
        (ClientStatus unless the server says lost/unknown, TaskStates, NetworkStatus) are kept
        and a missing Job is re-attached. A plan's new or changed `deployments` are written
        first, in the same write (its allocations count in them), and the `evals` that record
        its outcome last."""
        def build(txn: Txn) -> None:
            for d in deployments:
                txn.upsert_deployment(d)
            for a in allocs:
                txn.upsert_alloc(a)
            for e in evals:
                txn.upsert_eval(e)
        return self._write(build)

    # --- deployments ---------------------------------------------------------------------------

    def update_deployment(self, d: Deployment, *, evals: Iterable[Evaluation] = (),
                          stable: tuple[int, bool] | None = None,
                          health: dict[str, AllocDeploymentStatus] | None = None,
                          canaries_promoted: Iterable[str] = ()) -> int:
        """One write for a deployment's change: its new state, the evaluations that act on it,
        its job version's Stable flag (`stable` = (version, flag)), allocation health, and
        promoted canaries (their DeploymentStatus.Canary cleared)."""
        def build(txn: Txn) -> None:
            txn.upsert_deployment(d)
            for alloc_id, status in (health or {}).items():
                txn.set_alloc_health(alloc_id, status)
            for alloc_id in canaries_promoted:
                txn.promote_canary(alloc_id)
            if stable is not None:
                txn.set_job_stable((d.namespace, d.job_id), *stable)
            for e in evals:
                txn.upsert_eval(e)
        return self._write(build)

    def delete_deployments(self, deployment_ids: Iterable[str]) -> int:
        """Garbage collection: deployments by ID, unknown IDs ignored."""
        def build(txn: Txn) -> None:
            for i in deployment_ids:
                txn.delete_deployment(i)
        return self._write(build)

    def set_job_stable(self, namespace: str, job_id: str, version: int, stable: bool) -> int:
        return self._write(lambda txn: txn.set_job_stable((namespace, job_id), version, stable))

    def deployment(self, deployment_id: str) -> Deployment | None:
        return self._view.deployment(deployment_id)

    def deployments(self, namespace: str | None = None, prefix: str = "") -> list[Deployment]:
        with self._mem_lock:
            return self._view.deployments(namespace, prefix)

    def deployments_by_job(self, namespace: str, job_id: str) -> list[Deployment]:
        with self._mem_lock:
            return self._view.deployments_by_job(namespace, job_id)

    def latest_deployment(self, namespace: str, job_id: str) -> Deployment | None:
        with self._mem_lock:
            return self._view.latest_deployment(namespace, job_id)

    def update_allocs_from_client(self, allocs: Iterable[Allocation]) -> int:
        """Client writes: only ClientStatus, ClientDescription, TaskStates, NetworkStatus and
        ModifyTime are taken; unknown allocations are ignored."""
        def build(txn: Txn) -> None:
            for a in allocs:
                txn.update_alloc_from_client(a)
        return self._write(build)

    def apply_plan_result(self, allocs: Iterable[Allocation] = (),
                          evals: Iterable[Evaluation] = (), *,
                          stopped: Iterable[Allocation] = ()) -> int:
        """A scheduler plan in one transaction: `stopped` (stop/evict: DesiredStatus,
        DesiredDescription, FollowupEvalID, and ClientStatus when lost/unknown are taken from
        each, the rest kept), then `allocs` (placements and updates, as upsert_allocs), then
        `evals` (the eval's own update, follow-up and blocked evals, as upsert_evals)."""
        def build(txn: Txn) -> None:
            for s in stopped:
                txn.stop_alloc(s)
            for a in allocs:
                txn.upsert_alloc(a)
            for e in evals:
                txn.upsert_eval(e)
        return self._write(build)

    # --- nodes ---------------------------------------------------------------------------------

    def upsert_node(self, node: Node) -> int:
        """Register or update a node; SchedulingEligibility and Drain are kept on update."""
        return self._write(lambda txn: txn.upsert_node(node))

    def update_node_status(self, node_id: str, status: str, description: str = "") -> int:
        return self._write(lambda txn: txn.update_node(
            node_id, status=status, status_description=description,
            status_updated_at=txn.ch.now // 1_000_000_000))

    def update_node_eligibility(self, node_id: str, eligibility: str) -> int:
        return self._write(lambda txn: txn.update_node(node_id, scheduling_eligibility=eligibility))

    def modify_node(self, node_id: str, change: Callable[[Node, int], dict[str, Any] | None],
                    evals: Iterable[Evaluation] = ()) -> int:
        """Read-modify-write of one node in one transaction, with `evals`: `change(node, index)`
        gets the node as stored and this write's index and returns the fields to set (None:
        nothing to change, and nothing is written). NotFound if there is no such node."""
        def build(txn: Txn) -> None:
            node = txn.node(node_id)
            if node is None:
                raise NotFound(f"node {node_id!r} not found")
            fields = change(node, txn.index)
            if fields is None:
                raise _Unchanged()
            txn.update_node(node_id, **fields)
            for e in evals:
                txn.upsert_eval(e)
        try:
            return self._write(build)
        except _Unchanged:
            return self._t.index

    def delete_node(self, node_id: str, evals: Iterable[Evaluation] = ()) -> int:
        """Remove a node (purge), with the evaluations that replace its allocations."""
        def build(txn: Txn) -> None:
            txn.delete_node(node_id)
            for e in evals:
                txn.upsert_eval(e)
        return self._write(build)

    def update_alloc_transitions(self, transitions: dict[str, DesiredTransition],
                                 evals: Iterable[Evaluation] = ()) -> int:
        """Set DesiredTransition fields (the drainer's Migrate) and the evals that act on them,
        in one write (Nomad's AllocUpdateDesiredTransition)."""
        def build(txn: Txn) -> None:
            for alloc_id, tr in transitions.items():
                txn.set_alloc_transition(alloc_id, tr)
            for e in evals:
                txn.upsert_eval(e)
        return self._write(build)

    def update_alloc_health(self, health: dict[str, AllocDeploymentStatus]) -> int:
        """Record DeploymentStatus (healthy or not) on allocations."""
        def build(txn: Txn) -> None:
            for alloc_id, status in health.items():
                txn.set_alloc_health(alloc_id, status)
        return self._write(build)

    # --- reading -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A consistent read-only view at the current index (shared while nothing changes)."""
        with self._mem_lock:
            if self._snap is None:
                self._snap = Snapshot(self._t.freeze())
            return self._snap

    def index(self) -> int:
        return self._t.index

    def table_index(self, table: str | Iterable[str]) -> int:
        with self._mem_lock:
            if isinstance(table, str) and table.startswith(NODE_ALLOCS):
                return self._current(table)
            return self._view.table_index(table)

    def job(self, namespace: str, job_id: str) -> Job | None:
        return self._view.job(namespace, job_id)

    def jobs(self, namespace: str | None = None, prefix: str = "") -> list[Job]:
        with self._mem_lock:
            return self._view.jobs(namespace, prefix)

    def job_version(self, namespace: str, job_id: str, version: int) -> Job | None:
        with self._mem_lock:
            return self._view.job_version(namespace, job_id, version)

    def job_versions(self, namespace: str, job_id: str) -> list[Job]:
        with self._mem_lock:
            return self._view.job_versions(namespace, job_id)

    def job_summary(self, namespace: str, job_id: str) -> JobSummary | None:
        with self._mem_lock:
            return self._view.job_summary(namespace, job_id)

    def eval(self, eval_id: str) -> Evaluation | None:
        return self._view.eval(eval_id)

    def evals(self, namespace: str | None = None, job_id: str | None = None,
              prefix: str = "") -> list[Evaluation]:
        with self._mem_lock:
            return self._view.evals(namespace, job_id, prefix)

    def evals_by_job(self, namespace: str, job_id: str) -> list[Evaluation]:
        with self._mem_lock:
            return self._view.evals_by_job(namespace, job_id)

    def alloc(self, alloc_id: str) -> Allocation | None:
        return self._view.alloc(alloc_id)

    def allocs(self, prefix: str = "", namespace: str | None = None) -> list[Allocation]:
        with self._mem_lock:
            return self._view.allocs(prefix, namespace)

    def allocs_by_job(self, namespace: str, job_id: str, all_versions: bool = True) -> list[Allocation]:
        with self._mem_lock:
            return self._view.allocs_by_job(namespace, job_id, all_versions)

    def allocs_by_node(self, node_id: str, terminal: bool | None = None) -> list[Allocation]:
        with self._mem_lock:
            return self._view.allocs_by_node(node_id, terminal)

    def allocs_by_eval(self, eval_id: str) -> list[Allocation]:
        with self._mem_lock:
            return self._view.allocs_by_eval(eval_id)

    def node(self, node_id: str) -> Node | None:
        return self._view.node(node_id)

    def nodes(self, prefix: str = "") -> list[Node]:
        with self._mem_lock:
            return self._view.nodes(prefix)

    # --- blocking queries ----------------------------------------------------------------------

    def _current(self, target: Target) -> int:
        if target is None:
            return self._t.index
        if isinstance(target, str) and target.startswith(NODE_ALLOCS):
            t = self._t
            return t.node_allocs_index.get(target[len(NODE_ALLOCS):], t.node_allocs_base)
        return self._view.table_index(target)

    @staticmethod
    def _check(target: Target) -> Target:
        if isinstance(target, str) and target.startswith(NODE_ALLOCS):
            return target
        names = [target] if isinstance(target, str) else list(target or ())
        bad = [n for n in names if n not in TABLES]
        if bad:
            raise ValueError(f"unknown table {bad[0]!r}; tables are {', '.join(TABLES)}")
        return target if target is None or isinstance(target, str) else tuple(names)

    def wait(self, min_index: int, timeout_s: float, table: Target = None) -> int:
        """Block until the index (or `table`'s index, or the largest of several tables') is
        greater than `min_index`, or `timeout_s` passes; return that index."""
        return self._waiters.wait(min_index, timeout_s, self._check(table))

    async def wait_async(self, min_index: int, timeout_s: float, table: Target = None) -> int:
        """`wait` for asyncio: the event loop is not blocked."""
        return await self._waiters.wait_async(min_index, timeout_s, self._check(table))

    def watch(self, min_index: int, timeout_s: float, done: Callable[[int], None],
              table: Target = None) -> Callable[[bool], None] | None:
        """`wait_async` without a coroutine (`Waiters.watch`): `done(index)` on the event loop."""
        return self._waiters.watch(min_index, timeout_s, self._check(table), done)


def _apply_rows(rows: Mapping[K, V | None], put: Callable[[V], object], drop: Callable[[K], object]) -> None:
    """A write's rows of one table into the read model: None means deleted."""
    for key, row in rows.items():
        if row is None:
            drop(key)
        else:
            put(row)


def apply_changes(t: Tables, ch: Changes, table_index: dict[str, int]) -> set[str]:
    """One write's changes into the read model `t`; the IDs of the nodes whose allocations
    changed (their `node_allocs_index` is now this write's index)."""
    t.index = ch.index
    t.table_index = table_index
    for v in ch.versions:
        t.put_version(v)
    _apply_rows(ch.jobs, t.put_job, t.drop_job)
    for vkey in ch.versions_purged:
        t.hide_version(vkey)
    for vkey in ch.versions_dropped:
        t.drop_version(vkey)
    _apply_rows(ch.evals, t.put_eval, t.drop_eval)
    nodes: set[str] = set()
    if ch.allocs:
        for alloc_id, new in ch.allocs.items():
            old = t.allocs.get(alloc_id)
            if old is not None:
                nodes.add(old.node_id)
            if new is not None:
                nodes.add(new.node_id)
        t.node_allocs_index.update(dict.fromkeys(nodes, ch.index))
    _apply_rows(ch.allocs, t.put_alloc, t.drop_alloc)
    _apply_rows(ch.nodes, t.put_node, t.drop_node)
    _apply_rows(ch.services, t.put_service, t.drop_service)
    _apply_rows(ch.intentions, t.put_intention, t.drop_intention)
    if ch.ca_state is not None:
        t.ca_state = ch.ca_state
    if ch.ca_serial is not None:
        t.ca_serial = ch.ca_serial
    _apply_rows(ch.acl_policies, t.put_acl_policy, t.drop_acl_policy)
    _apply_rows(ch.acl_tokens, t.put_acl_token, t.drop_acl_token)
    if ch.acl_bootstrap is not None:
        t.acl_bootstrap = ch.acl_bootstrap
    _apply_rows(ch.deployments, t.put_deployment, t.drop_deployment)
    for tbl, rows in ch.keyed.items():
        for key, row in rows.items():
            if row is None:
                t.drop_keyed(tbl, key)
            else:
                t.put_keyed(tbl, key, row)
    return nodes
