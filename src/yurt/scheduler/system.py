"""The system and sysbatch scheduler (Nomad scheduler/scheduler_system.go, reconciler/reconcile_node.go).

`count` allocations of each task group (a system job's count is 0 or 1; Nomad lets a sysbatch
group have more, each node then runs that many) on every ready, eligible node of the
job's datacenters and node pool that passes the group's checks (constraints, drivers, network)
and has room. Per node, for each allocation of the job there (Nomad's NodeReconciler.Compute):

- its group is gone (or count 0): stop;
- the drainer marked it (DesiredTransition.Migrate): stop, not replaced (the node is draining);
- its node is gone or down: lost; draining or disconnected: left alone (the drainer decides);
- its node is ineligible: left alone, unless the job changed: stop;
- its node is no longer in the job's datacenters/pool, or not ready: stop;
- the job changed: updated in place when only non-destructive fields changed and the node still
  suits the group, else stopped and replaced on the same node, `update.max_parallel` at a time
  (less the allocations of the deployment not healthy yet);
- else it stays.

A node with no live allocation of a group gets one, unless (sysbatch) an allocation of the same
job version already ended there (completed or failed: a sysbatch job runs once per node; a new
job version runs again). A node filtered by the group's checks is simply skipped; a node without
room is a placement failure: the group's AllocMetric on the eval, queued allocations and a
blocked eval that retries when capacity changes.

Deployments (system jobs with an `update` block, max_parallel > 0; Nomad 1.11): the first version
and every changed version get one, its desired total the nodes that can run the group; the
deployment watcher marks it healthy or failed as for service jobs. Canaries are not supported.
"""

from __future__ import annotations

import random
from fnmatch import fnmatchcase
from typing import Any

from yurt.structs import (AllocDeploymentStatus, Allocation, Deployment, DeploymentState,
                          DesiredUpdates, Evaluation, Job, Node, Plan, PlanAnnotations, merged_update)
from yurt.structs import deployment_status as ds
from yurt.structs.times import rfc3339

from .diff import tasks_updated
from .generic import SchedulerResult, _Scheduler
from .reconcile import Place, _ended, _same_version
from .stack import Group, Stack
from .state import SchedulerState
from .util import ALLOC_LOST, ALLOC_NOT_NEEDED, ALLOC_UPDATING, alloc_name, new_id

ALLOC_NODE_TAINTED = "alloc not needed as node is tainted"


def schedule_system(ev: Evaluation, job: Job | None, state: SchedulerState, plan: Plan, *,
                    seed: int, now_ns: int) -> SchedulerResult:
    rng = random.Random(f"{seed}:{ev.id}")
    return _SystemScheduler(ev, job, state, plan, rng, now_ns).run()


def _tainted(node: Node | None) -> bool:
    """Nomad's taintedNodes: gone, down, disconnected or draining."""
    return node is None or node.status in ("down", "disconnected") or node.drain_strategy is not None


def _node_gone(node: Node | None) -> bool:
    return node is None or node.status == "down"


def _in_scope(job: Job, node: Node) -> bool:
    """The node is in the job's node pool and datacenters (Nomad's notReady set: in scope, but
    not ready or not eligible)."""
    pool = job.node_pool or "default"
    if pool != "all" and node.node_pool != pool:
        return False
    return any(fnmatchcase(node.datacenter, p) for p in job.datacenters or ["*"])


class _SystemScheduler(_Scheduler):
    def run(self) -> SchedulerResult:
        ev, job, res, state = self.ev, self.job, self.result, self.state
        namespace = ev.namespace or "default"
        allocs = state.allocs_by_job(namespace, ev.job_id)
        deployment = state.latest_deployment(namespace, ev.job_id)
        desired: dict[str, DesiredUpdates] = {}
        res.desired_updates = desired
        self.plan.annotations = PlanAnnotations.model_construct(desired_tg_updates=desired)

        if job is None or job.stop:
            if deployment is not None and deployment.active():
                self.plan.deployment_updates = [
                    _ended(deployment, ds.DEPLOYMENT_CANCELLED, ds.DESC_STOPPED, self.now)]
            for a in allocs:
                if not a.terminal():
                    desired.setdefault(a.task_group, DesiredUpdates()).stop += 1
                    self.stop(a, ALLOC_NOT_NEEDED)
            return res

        # The deployment of this version, if it is still the current one (Nomad's
        # cancelUnnededSystemDeployments): another version's active one is cancelled.
        old: Deployment | None = None
        current = deployment
        if current is not None and (current.job_version != job.version
                                    or current.job_create_index != job.create_index):
            if current.active():
                self.plan.deployment_updates = [
                    _ended(current, ds.DEPLOYMENT_CANCELLED, ds.DESC_NEWER_JOB, self.now)]
            old, current = current, None
        elif current is not None and current.status == ds.DEPLOYMENT_SUCCESSFUL:
            old, current = current, None

        stack = self.stack = Stack(job, state.nodes(), self.rng, node_used=state.node_used,
                                   stops=self.plan.node_update)
        eligible = {n.id: n for n in stack.order}
        groups = {tg.name: tg for tg in job.task_groups or []}
        required = {alloc_name(job.id, tg.name, i): tg
                    for tg in job.task_groups or [] for i in range(tg.count or 0)}
        for name in groups:
            desired[name] = DesiredUpdates()

        live: dict[str, list[Allocation]] = {}
        terminal: dict[tuple[str, str], Allocation] = {}    # (node, name) -> latest terminal alloc
        for a in allocs:
            if a.terminal():
                prev = terminal.get((a.node_id, a.name))
                if prev is None or a.create_index > prev.create_index or (
                        a.create_index == prev.create_index and a.create_time > prev.create_time):
                    terminal[(a.node_id, a.name)] = a
            else:
                live.setdefault(a.node_id, []).append(a)

        places: list[tuple[Place, str]] = []
        updates: list[Allocation] = []
        kept: list[Allocation] = []             # live allocations left as they are
        for node_id in sorted(set(eligible) | set(live)):
            node = eligible.get(node_id) or state.node(node_id)
            existing: set[str] = set()
            for a in live.get(node_id, []):
                existing.add(a.name)
                tg = required.get(a.name)
                du = desired.setdefault(a.task_group, DesiredUpdates())
                if tg is None:
                    self.stop(a, ALLOC_NOT_NEEDED)
                    du.stop += 1
                elif a.desired_transition.migrate:
                    self.stop(a, ALLOC_NODE_TAINTED)
                    du.migrate += 1
                elif _tainted(node):
                    if _node_gone(node):
                        self.stop(a, ALLOC_LOST, "lost")
                        du.stop += 1
                    else:
                        kept.append(a)
                        du.ignore += 1
                elif node is not None and node_id not in eligible and _in_scope(job, node):
                    if _same_version(a, job):
                        kept.append(a)
                        du.ignore += 1
                    else:
                        self.stop(a, ALLOC_NOT_NEEDED)
                        du.stop += 1
                elif node_id not in eligible:
                    self.stop(a, ALLOC_NOT_NEEDED)
                    du.stop += 1
                elif not _same_version(a, job):
                    updates.append(a)
                else:
                    kept.append(a)
                    du.ignore += 1
            if node_id not in eligible:
                continue
            for name, tg in required.items():
                if name in existing:
                    continue
                prev = terminal.get((node_id, name))
                if job.type == "sysbatch" and prev is not None:
                    if _same_version(prev, job):
                        desired[tg.name].ignore += 1     # it ran here already
                        continue
                places.append((Place(tg, name, previous=prev), node_id))   # a system job's ended one is replaced

        # Updates: in place when the group did not change destructively and the node still suits it.
        destructive: list[Allocation] = []
        inplace: list[Allocation] = []
        group_of = {name: Group(job, tg, [], 1) for name, tg in groups.items()}
        for a in updates:
            tg = groups[a.task_group]
            old_tg = a.job.group(tg.name) if a.job is not None else None
            node = eligible[a.node_id]
            if (old_tg is not None and not tasks_updated(old_tg, tg)
                    and stack.feasible_static(node, group_of[tg.name]) is None):
                inplace.append(a)
            else:
                destructive.append(a)

        dep = self._deployment(job, current, old, allocs, bool(updates), eligible, group_of, required)
        dep_id = dep.id if dep is not None and dep.active() else ""
        for g in group_of.values():
            g.deployment_id = dep_id

        for a in inplace:
            update: dict[str, Any] = {"job": job, "eval_id": self.ev.id, "modify_time": self.now}
            if dep_id:
                update.update(deployment_id=dep_id,
                              deployment_status=AllocDeploymentStatus(timestamp=rfc3339(self.now)))
            self.plan.node_allocation.setdefault(a.node_id, []).append(a.model_copy(update=update))
            desired[a.task_group].in_place_update += 1

        # Destructive updates, max_parallel at a time per group (Nomad's evictAndPlace).
        limits: dict[str, int] = {}
        for name, tg in groups.items():
            up = merged_update(job.update, tg.update)
            written = job.update is not None or tg.update is not None
            limits[name] = (up.max_parallel or 0) if written and (up.max_parallel or 0) > 0 else len(destructive)
        if dep is not None and dep.status in (ds.DEPLOYMENT_PAUSED, ds.DEPLOYMENT_FAILED):
            limits = dict.fromkeys(limits, 0)       # a paused or failed rollout goes no further
        elif dep is not None and dep.active():
            for a in kept:
                if a.deployment_id == dep.id and _same_version(a, job) and not (
                        a.deployment_status is not None and a.deployment_status.healthy is not None):
                    limits[a.task_group] -= 1
        replacing: list[tuple[Place, str]] = []
        for a in sorted(destructive, key=lambda a: (a.task_group, a.node_id)):
            if limits[a.task_group] > 0:
                limits[a.task_group] -= 1
                replacing.append((Place(groups[a.task_group], a.name, previous=a), a.node_id))
                desired[a.task_group].destructive_update += 1
            else:
                desired[a.task_group].ignore += 1

        self._place_nodes(job, replacing, places, eligible, group_of)
        if dep is not None:
            # nodes where the group did not fit are not part of the deployment (Nomad's
            # candidate counts)
            states = dict(dep.task_groups)
            for name, n in res.queued.items():
                st = states.get(name)
                if st is not None and n:
                    states[name] = st.model_copy(update={"desired_total": max(0, st.desired_total - n)})
            if current is None or dep.id != current.id or states != current.task_groups:
                self.plan.deployment = dep.model_copy(update={"task_groups": states})
        if res.failed_tg_allocs:
            res.blocked_eval = self._blocked(job)
        return res

    def _deployment(self, job: Job, current: Deployment | None, old: Deployment | None,
                    allocs: list[Allocation], updating: bool, eligible: dict[str, Node],
                    group_of: dict[str, Group], required: dict[str, Any]) -> Deployment | None:
        """This version's deployment (Nomad's createDeployment: made the first time the version
        runs, or when it updates allocations; never again once one of this version ended), its
        desired totals the eligible nodes that can run each group (less, once placed, those
        where it did not fit). The plan carries it only when it is new or changed."""
        if job.type != "system":
            return None
        stack = self.stack
        assert stack is not None
        dep = current
        had = any(_same_version(a, job) and a.job is not None for a in allocs)
        for tg in job.task_groups or []:
            if not any(t is tg for t in required.values()):
                continue
            up = merged_update(job.update, tg.update)
            if (job.update is None and tg.update is None) or (up.max_parallel or 0) <= 0:
                continue
            total = sum(1 for n in eligible.values() if stack.feasible_static(n, group_of[tg.name]) is None)
            st = dep.task_groups.get(tg.name) if dep is not None else None
            if st is None:
                if dep is not None and dep.status in (ds.DEPLOYMENT_PAUSED, ds.DEPLOYMENT_FAILED):
                    continue
                if old is not None and old.job_version == job.version:
                    continue
                if had and not updating:
                    continue
                if dep is None:
                    dep = Deployment(
                        id=new_id(random.Random(f"deployment:{self.ev.id}:{job.job_modify_index}")),
                        namespace=job.namespace or "default", job_id=job.id,
                        job_version=job.version or 0, job_modify_index=job.job_modify_index,
                        job_spec_modify_index=job.job_modify_index, job_create_index=job.create_index,
                        eval_priority=job.priority or 50, create_time=self.now, modify_time=self.now)
                st = DeploymentState(auto_revert=bool(up.auto_revert), auto_promote=bool(up.auto_promote),
                                     progress_deadline=up.progress_deadline or 0, desired_total=total)
            elif dep is not None and dep.active() and st.desired_total != total:
                st = st.model_copy(update={"desired_total": total})   # nodes joined or left
            else:
                continue
            assert dep is not None
            dep = dep.model_copy(update={"task_groups": {**dep.task_groups, tg.name: st}})
        return dep

    def _place_nodes(self, job: Job, replacing: list[tuple[Place, str]], places: list[tuple[Place, str]],
                     eligible: dict[str, Node], group_of: dict[str, Group]) -> None:
        """Each placement on its own node (Nomad's SystemStack over one node at a time)."""
        stack = self.stack
        assert stack is not None
        res = self.result
        todo = [(p, n, True) for p, n in replacing] + [(p, n, False) for p, n in places]
        for p, node_id, destructive in todo:
            node = eligible[node_id]
            group = group_of[p.tg.name]
            tg_name = p.tg.name
            prev = p.previous
            if destructive and prev is not None:
                self.stop(prev, ALLOC_UPDATING)
            stack.order, stack.offset, stack.fixed = [node], 0, 1
            chosen, ports, metric = stack.select(group, None, self.usage_of)
            if chosen is None:
                if metric.nodes_filtered > 0:
                    continue        # the node does not suit the group: skipped, not a failure (Nomad)
                if destructive and prev is not None:
                    self.unstop(prev)
                res.queued[tg_name] = res.queued.get(tg_name, 0) + 1
                failed = res.failed_tg_allocs.get(tg_name)
                if failed is None:
                    res.failed_tg_allocs[tg_name] = metric
                else:
                    failed.coalesced_failures += 1
                continue
            if not destructive:
                res.desired_updates[tg_name].place += 1
            alloc = self._new_alloc(job, group, p, chosen, ports, metric)
            self.plan.node_allocation.setdefault(chosen.id, []).append(alloc)
            self.usage_of(chosen).add(alloc, True)
