"""One write transaction being built: reads see the committed state plus this write's changes.

Every object written is a new object (a copy of what the caller passed, stamped with indexes);
objects already in the store are never mutated. Jobs are deep-copied (registrations are rare);
allocations, evaluations and nodes are shallow-copied for speed, so a caller must not mutate an
object (or its nested parts) after handing it to the store.
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import BaseModel

from yurt.structs import (AllocDeploymentStatus, Allocation, Deployment, DesiredTransition, Evaluation, Job, Node,
                          copied)
from yurt.structs.times import parse_rfc3339, rfc3339
from yurt.structs.alloc import ALLOC_DESIRED_STOP, ALLOC_LOST, ALLOC_UNKNOWN

from . import derive
from .errors import NotFound, StateError
from .mesh_writes import MeshTxn
from .memory import AllocCounts, JobKey, Tables, count_key, job_key, version_key
from .sqlite_backend import Changes


class Txn(MeshTxn):
    def __init__(self, tables: Tables, index: int, now_ns: int) -> None:
        self.t = tables
        self.ch = Changes(index, now_ns)
        self.touched: set[JobKey] = set()
        self.evals_deleted: set[JobKey] = set()  # jobs with evals/allocs collected (Nomad's evalDelete)
        self.fresh_jobs: set[JobKey] = set()  # jobs written by this txn (private objects)

    @property
    def index(self) -> int:
        return self.ch.index

    # --- reads through this txn ----------------------------------------------------------------

    def job(self, key: JobKey) -> Job | None:
        ch = self.ch.jobs
        return ch[key] if key in ch else self.t.jobs.get(key)

    def alloc(self, alloc_id: str) -> Allocation | None:
        ch = self.ch.allocs
        return ch[alloc_id] if alloc_id in ch else self.t.allocs.get(alloc_id)

    def eval(self, eval_id: str) -> Evaluation | None:
        ch = self.ch.evals
        return ch[eval_id] if eval_id in ch else self.t.evals.get(eval_id)

    def node(self, node_id: str) -> Node | None:
        ch = self.ch.nodes
        return ch[node_id] if node_id in ch else self.t.nodes.get(node_id)

    # --- keyed tables (state/keyed.py) -----------------------------------------------------------

    def keyed(self, table: str, key: str) -> BaseModel | None:
        rows = self.ch.keyed.get(table)
        if rows is not None and key in rows:
            return rows[key]
        return self.t.keyed.get(table, {}).get(key)

    def keyed_items(self, table: str, prefix: str = "") -> list[tuple[str, BaseModel]]:
        """The rows of `table` whose key starts with `prefix`, as this write sees them, by key."""
        rows = dict(self.t.keyed.get(table, {}))
        for k, r in self.ch.keyed.get(table, {}).items():
            if r is None:
                rows.pop(k, None)
            else:
                rows[k] = r
        return sorted((k, r) for k, r in rows.items() if k.startswith(prefix))

    def put_keyed(self, table: str, key: str, row: BaseModel) -> None:
        self.ch.keyed_rows(table)[key] = row

    def drop_keyed(self, table: str, key: str) -> None:
        self.ch.keyed_rows(table)[key] = None

    # --- jobs ----------------------------------------------------------------------------------

    def upsert_job(self, job: Job) -> Job:
        key = job_key(job)
        old = self.job(key)
        idx, now = self.index, self.ch.now
        upd: dict = {"namespace": key[0], "modify_index": idx}
        if old is None:
            upd.update(create_index=idx, job_modify_index=idx, version=0, submit_time=now,
                       stable=False)
        elif derive.spec_changed(old, job):
            upd.update(create_index=old.create_index, job_modify_index=idx,
                       version=old.version + 1, submit_time=now, stable=False,
                       status=old.status)
        else:
            upd.update(create_index=old.create_index, job_modify_index=old.job_modify_index,
                       version=old.version, submit_time=old.submit_time, stable=old.stable,
                       status=old.status)
        new = job.model_copy(update=upd, deep=True)
        self.ch.jobs[key] = new
        self.ch.versions = [v for v in self.ch.versions if version_key(v) != version_key(new)]
        self.ch.versions.append(new)
        self.touched.add(key)
        self.fresh_jobs.add(key)
        return new

    def delete_job(self, key: JobKey) -> None:
        if self.job(key) is None:
            raise NotFound(f"job {key[1]!r} not found in namespace {key[0]!r}")
        self.ch.jobs[key] = None
        referenced = {version_key(a.job) for a in self._allocs_of(key) if a.job is not None}
        for job in self.t.versions.get(key, {}).values():
            vkey = version_key(job)
            if vkey in referenced:
                self.ch.versions_purged.append(vkey)
            else:
                self.ch.versions_dropped.append(vkey)
        self.ch.versions = [v for v in self.ch.versions if job_key(v) != key]
        self.touched.discard(key)

    def _allocs_of(self, key: JobKey) -> list[Allocation]:
        out = {a.id: a for a in self.t.allocs_by_job.get(key, {}).values()}
        for i, a in self.ch.allocs.items():
            if a is None:
                out.pop(i, None)
            elif (a.namespace, a.job_id) == key:
                out[i] = a
        return list(out.values())

    # --- allocations ---------------------------------------------------------------------------

    def _put_alloc(self, new: Allocation) -> None:
        if new.deployment_id:
            self._count_in_deployment(self.alloc(new.id), new)
        job = new.job
        if job is not None:
            cached = self.t.job_cache.get(version_key(job))
            if cached is None:
                self.ch.inline_jobs.add(new.id)
            else:
                self.ch.inline_jobs.discard(new.id)
                if cached is not job:  # same version: share the store's object (as Nomad does)
                    new = copied(new, {"job": cached})
        self.ch.allocs[new.id] = new
        self.touched.add((new.namespace, new.job_id))

    def upsert_alloc(self, a: Allocation) -> None:
        """A server write (scheduler/plan): Nomad's upsertAllocsImpl."""
        exist = self.alloc(a.id)
        idx, now = self.index, self.ch.now
        upd: dict = {"modify_index": idx, "alloc_modify_index": idx, "modify_time": now}
        if exist is None:
            if a.job is None:
                raise StateError(f"allocation {a.id!r} has no job")
            upd.update(create_index=idx, create_time=a.create_time or now)
        else:
            upd.update(create_index=exist.create_index, create_time=exist.create_time,
                       task_states=exist.task_states)
            if a.client_status not in (ALLOC_LOST, ALLOC_UNKNOWN):
                upd.update(client_status=exist.client_status,
                           client_description=exist.client_description)
            if a.network_status is None:
                upd["network_status"] = exist.network_status
            if a.job is None:
                upd["job"] = exist.job
            # the drainer's fields: a plan carries stale copies of them (an allocation updated in
            # place into a new deployment starts its health over)
            if a.deployment_status is None and a.deployment_id == exist.deployment_id:
                upd["deployment_status"] = exist.deployment_status
            if a.desired_transition == DesiredTransition():
                upd["desired_transition"] = exist.desired_transition
        self._put_alloc(copied(a, upd))

    def stop_alloc(self, s: Allocation) -> None:
        """A plan's stop/evict: only the fields the plan sets change (Nomad's AllocsStopped)."""
        exist = self.alloc(s.id)
        if exist is None:
            return
        idx = self.index
        upd: dict = {"desired_status": s.desired_status, "desired_description": s.desired_description,
                     "modify_index": idx, "alloc_modify_index": idx, "modify_time": self.ch.now}
        if s.client_status in (ALLOC_LOST, ALLOC_UNKNOWN):
            upd["client_status"] = s.client_status
            upd["client_description"] = s.client_description
        if s.followup_eval_id:
            upd["followup_eval_id"] = s.followup_eval_id
        self._put_alloc(exist.model_copy(update=upd))

    def update_alloc_from_client(self, a: Allocation) -> None:
        """Only what the client owns; unknown allocations are ignored (as Nomad does)."""
        exist = self.alloc(a.id)
        if exist is None:
            return
        status, description = a.client_status, a.client_description
        if exist.client_status == ALLOC_LOST and exist.desired_status == ALLOC_DESIRED_STOP:
            # the server gave it up when its node went down, and replaced it: a node that comes
            # back reports what it last knew, but the allocation stays lost (the client stops it)
            status, description = exist.client_status, exist.client_description
        self._put_alloc(exist.model_copy(update={
            "client_status": status, "client_description": description,
            "task_states": a.task_states, "network_status": a.network_status,
            "modify_index": self.index, "modify_time": a.modify_time or self.ch.now}))

    def set_alloc_transition(self, alloc_id: str, transition: DesiredTransition) -> None:
        """Nomad's UpdateAllocsDesiredTransitions: only ModifyIndex moves (the client does not
        act on it); unknown allocations are ignored."""
        exist = self.alloc(alloc_id)
        if exist is None:
            return
        merged = exist.desired_transition.model_copy(update=transition.model_dump(exclude_none=True))
        self._put_alloc(exist.model_copy(update={"desired_transition": merged, "modify_index": self.index}))

    def set_alloc_health(self, alloc_id: str, status: AllocDeploymentStatus) -> None:
        """The allocation's health as the server decided it; only ModifyIndex moves."""
        exist = self.alloc(alloc_id)
        if exist is None:
            return
        self._put_alloc(exist.model_copy(update={
            "deployment_status": status.model_copy(update={"modify_index": self.index}),
            "modify_index": self.index}))

    # --- deployments ---------------------------------------------------------------------------

    def deployment(self, deployment_id: str) -> Deployment | None:
        ch = self.ch.deployments
        return ch[deployment_id] if deployment_id in ch else self.t.deployments.get(deployment_id)

    def upsert_deployment(self, d: Deployment) -> Deployment:
        exist = self.deployment(d.id)
        idx, now = self.index, self.ch.now
        new = d.model_copy(update={"create_index": exist.create_index if exist else idx, "modify_index": idx,
                                   "create_time": exist.create_time if exist else (d.create_time or now),
                                   "modify_time": now})
        self.ch.deployments[d.id] = new
        return new

    def delete_deployment(self, deployment_id: str) -> None:
        if self.deployment(deployment_id) is not None:
            self.ch.deployments[deployment_id] = None

    def _count_in_deployment(self, old: Allocation | None, new: Allocation) -> None:
        """Nomad's updateDeploymentWithAlloc: an allocation joining a deployment counts as
        placed (a canary also by ID); its first health, or a change of it, moves the healthy and
        unhealthy counts. Healthy allocations push the progress deadline out."""
        d = self.deployment(new.deployment_id)
        state = d.task_groups.get(new.task_group) if d is not None else None
        if d is None or state is None:
            return
        st = copied(state, {"placed_canaries": list(state.placed_canaries)})   # the rest are scalars
        now = self.ch.now
        joined = old is None or old.deployment_id != new.deployment_id
        if joined:
            st.placed_allocs += 1
            if new.deployment_status is not None and new.deployment_status.canary:
                st.placed_canaries.append(new.id)
            if st.progress_deadline and _at(st.require_progress_by) == 0:
                st.require_progress_by = rfc3339(now + st.progress_deadline)
        before = None if joined or old is None or old.deployment_status is None else old.deployment_status.healthy
        after = new.deployment_status.healthy if new.deployment_status is not None else None
        if before == after and not joined:
            return
        if before is True:
            st.healthy_allocs -= 1
        elif before is False:
            st.unhealthy_allocs -= 1
        if after is True:
            st.healthy_allocs += 1
            if st.progress_deadline:
                st.require_progress_by = rfc3339(max(_at(st.require_progress_by),
                                                     now + st.progress_deadline))
        elif after is False:
            st.unhealthy_allocs += 1
        self.upsert_deployment(copied(d, {"task_groups": {**d.task_groups, new.task_group: st}}))

    def set_job_stable(self, key: JobKey, version: int, stable: bool) -> None:
        """Mark one version of a job stable (a successful deployment, or `/stable`)."""
        versions = {v.version: v for v in self.t.versions.get(key, {}).values()}
        versions.update({v.version: v for v in self.ch.versions if job_key(v) == key})
        ver = versions.get(version)
        if ver is None:
            raise NotFound(f"job {key[1]!r} has no version {version}")
        if ver.stable == stable:
            return
        new = ver.model_copy(update={"stable": stable})
        self.ch.versions = [v for v in self.ch.versions if version_key(v) != version_key(new)]
        self.ch.versions.append(new)
        job = self.job(key)
        if job is not None and job.version == version:
            self.ch.jobs[key] = job.model_copy(update={"stable": stable, "modify_index": self.index})
            self.touched.add(key)

    def promote_canary(self, alloc_id: str) -> None:
        """A promoted canary is no canary any more: its client learns it (AllocModifyIndex moves)
        and registers its services with their usual tags."""
        exist = self.alloc(alloc_id)
        if exist is None or exist.deployment_status is None or not exist.deployment_status.canary:
            return
        self._put_alloc(exist.model_copy(update={
            "deployment_status": exist.deployment_status.model_copy(update={"canary": False,
                                                                            "modify_index": self.index}),
            "modify_index": self.index, "alloc_modify_index": self.index}))

    def delete_alloc(self, alloc_id: str) -> None:
        a = self.alloc(alloc_id)
        if a is None:
            return
        self.ch.allocs[alloc_id] = None
        self.ch.inline_jobs.discard(alloc_id)
        self.touched.add((a.namespace, a.job_id))
        self.evals_deleted.add((a.namespace, a.job_id))  # collected: dead, not pending
        # A purged job's version is kept only while an allocation still refers to it.
        if a.job is not None:
            vkey = version_key(a.job)
            if (self.t.job_cache.get(vkey) is a.job and not self.t.is_live_version(vkey)
                    and not any(version_key(b.job) == vkey for b in self._allocs_of(vkey[:2])
                                if b.job is not None)
                    and vkey not in self.ch.versions_dropped):
                self.ch.versions_dropped.append(vkey)

    # --- evaluations ---------------------------------------------------------------------------

    def upsert_eval(self, e: Evaluation) -> Evaluation:
        exist = self.eval(e.id)
        idx, now = self.index, self.ch.now
        if exist is None:
            upd = {"create_index": idx, "modify_index": idx, "create_time": e.create_time or now,
                   "modify_time": now}
        else:
            upd = {"create_index": exist.create_index, "modify_index": idx,
                   "create_time": exist.create_time, "modify_time": now}
        new = e.model_copy(update=upd)
        self.ch.evals[new.id] = new
        self.touched.add((new.namespace, new.job_id))
        if exist is not None and (exist.namespace, exist.job_id) != (new.namespace, new.job_id):
            self.touched.add((exist.namespace, exist.job_id))
        return new

    def delete_eval(self, eval_id: str) -> None:
        e = self.eval(eval_id)
        if e is None:
            return
        self.ch.evals[eval_id] = None
        self.touched.add((e.namespace, e.job_id))
        self.evals_deleted.add((e.namespace, e.job_id))

    # --- nodes ---------------------------------------------------------------------------------

    def upsert_node(self, node: Node) -> None:
        exist = self.node(node.id)
        idx, now_s = self.index, self.ch.now // 1_000_000_000
        upd: dict[str, object]
        if exist is None:
            upd = {"create_index": idx, "modify_index": idx,
                   "status_updated_at": node.status_updated_at or now_s}
        else:  # Nomad keeps the server-side eligibility and drain across re-registration
            upd = {"create_index": exist.create_index, "modify_index": idx,
                   "scheduling_eligibility": exist.scheduling_eligibility, "drain": exist.drain,
                   "drain_strategy": exist.drain_strategy, "last_drain": exist.last_drain,
                   "events": exist.events,
                   "status_updated_at": (now_s if node.status != exist.status
                                         else exist.status_updated_at)}
        upd["computed_class"] = node.compute_class()
        self.ch.nodes[node.id] = node.model_copy(update=upd)

    def update_node(self, node_id: str, **fields: object) -> None:
        exist = self.node(node_id)
        if exist is None:
            raise NotFound(f"node {node_id!r} not found")
        fields["modify_index"] = self.index
        self.ch.nodes[node_id] = exist.model_copy(update=fields)

    def delete_node(self, node_id: str) -> None:
        if self.node(node_id) is None:
            raise NotFound(f"node {node_id!r} not found")
        self.ch.nodes[node_id] = None

    # --- derived: job status -------------------------------------------------------------------

    def finish(self) -> Changes:
        """Re-derive the status of every job this write touched; a change is a job write."""
        if not self.touched:
            return self.ch
        alloc_changes: dict[JobKey, list] = defaultdict(list)
        for i, new in self.ch.allocs.items():
            old = self.t.allocs.get(i)
            for a in (old, new):
                if a is not None:
                    alloc_changes[(a.namespace, a.job_id)].append((old, new))
                    break
        eval_changes: dict[JobKey, list] = defaultdict(list)
        for i, new_ev in self.ch.evals.items():
            old_ev = self.t.evals.get(i)
            for e in {id(x): x for x in (old_ev, new_ev) if x is not None}.values():
                eval_changes[(e.namespace, e.job_id)].append((i, new_ev))
        for key in self.touched:
            job = self.job(key)
            if job is None:
                continue
            ck = (key[0], key[1], job.create_index)
            counts = self.t.counts.get(ck)
            if key in alloc_changes:
                counts = counts.copy() if counts is not None else AllocCounts()
                for old, new in alloc_changes[key]:
                    if old is not None and count_key(old) == ck:
                        counts.add(old, -1)
                    if new is not None and count_key(new) == ck:
                        counts.add(new, 1)
            evals = dict(self.t.evals_by_job.get(key, {}))
            for i, new_ev in eval_changes.get(key, ()):
                if new_ev is None or (new_ev.namespace, new_ev.job_id) != key:
                    evals.pop(i, None)
                else:
                    evals[i] = new_ev
            status = derive.job_status(job, counts, evals.values(), key in self.evals_deleted)
            if status == job.status:
                continue
            if key in self.fresh_jobs:
                job.status = status  # written by this txn, not visible to anyone yet
            else:
                self.ch.jobs[key] = job.model_copy(update={"status": status, "modify_index": self.index})
        return self.ch


def _at(text: str) -> int:
    """An RFC 3339 time in ns since the epoch; 0 for Go's zero time or none."""
    return max(parse_rfc3339(text) or 0, 0)
