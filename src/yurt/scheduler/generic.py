"""The service and batch scheduler (Nomad scheduler/generic_sched.go), as one pure function;
system and sysbatch jobs go to system.py.

``schedule(eval, state, seed=, now_ns=)`` reads the job, its allocations and the nodes from a
read-only state view, reconciles, places what must be placed and returns the plan and what the
eval should say. No I/O, no clock, all randomness from ``random.Random(seed)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from yurt.structs import (AllocatedCpuResources, AllocatedMemoryResources, AllocatedResources,
                          AllocatedSharedResources, AllocatedTaskResources, AllocDeploymentStatus, Allocation,
                          AllocMetric, DesiredTransition, DesiredUpdates, Evaluation, Job, Node,
                          Plan, PlanAnnotations, ReschedulePolicy, copied)

from . import reschedule
from .ports import port_mappings
from yurt.structs.times import rfc3339

from .reconcile import Place, Reconciled, reconcile
from .stack import Group, NodeUsage, Stack, base_usage
from .state import SchedulerState
from .util import ALLOC_RESCHEDULED, ALLOC_UPDATING, new_id

BLOCKED_DESCRIPTION = "created to place remaining allocations"
TRIGGER_QUEUED_ALLOCS = "queued-allocs"   # Nomad's trigger of a blocked eval


@dataclass
class SchedulerResult:
    plan: Plan
    failed_tg_allocs: dict[str, AllocMetric] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    desired_updates: dict[str, DesiredUpdates] = field(default_factory=dict)
    followup_evals: list[Evaluation] = field(default_factory=list)
    blocked_eval: Evaluation | None = None
    status: str = "complete"
    status_description: str = ""


def schedule(ev: Evaluation, state: SchedulerState, *, seed: int, now_ns: int) -> SchedulerResult:
    """Plan what evaluation ``ev`` asks for, against ``state`` (a SchedulerState)."""
    namespace = ev.namespace or "default"
    job = state.job(namespace, ev.job_id)
    plan = Plan.model_construct(
        eval_id=ev.id, priority=(job.priority if job else ev.priority) or 50, job=job,
        all_at_once=bool(job and job.all_at_once), node_update={}, node_allocation={},
        annotations=None, snapshot_index=state.index, deployment=None, deployment_updates=[])
    jtype = (job.type if job else ev.type) or "service"
    if jtype in ("system", "sysbatch"):
        from .system import schedule_system   # system.py builds on this module's _Scheduler
        return schedule_system(ev, job, state, plan, seed=seed, now_ns=now_ns)
    # The eval's ID is mixed into the seed so two evals given the same seed still draw
    # different allocation IDs; the same (seed, eval) always gives the same plan.
    rng = random.Random(f"{seed}:{ev.id}")
    return _Scheduler(ev, job, state, plan, rng, now_ns).run()


Ports = list[tuple[str, int, int, str]]   # (label, host port, port in the namespace, host IP)


class _Scheduler:
    def __init__(self, ev: Evaluation, job: Job | None, state: SchedulerState, plan: Plan,
                 rng: random.Random, now_ns: int) -> None:
        self.ev, self.job, self.state, self.plan, self.rng, self.now = ev, job, state, plan, rng, now_ns
        self.stopped: set[str] = set()
        self.result = SchedulerResult(plan=plan)
        self.stack: Stack | None = None
        self.live: list[tuple[Node, str]] = []      # (node, group) of the job's running allocs

    # --- plan bookkeeping ---------------------------------------------------------------------
    def stop(self, alloc: Allocation, description: str, client_status: str = "") -> None:
        update: dict[str, Any] = {"desired_status": "stop", "desired_description": description,
                                  "modify_time": self.now}
        if client_status:
            update["client_status"] = client_status
        self.plan.node_update.setdefault(alloc.node_id, []).append(alloc.model_copy(update=update))
        self.stopped.add(alloc.id)
        usage = self.stack.usage.get(alloc.node_id) if self.stack else None
        if usage is not None and not alloc.terminal():
            usage.add(alloc, self._mine(alloc), -1)

    def unstop(self, alloc: Allocation) -> None:
        entries = self.plan.node_update.get(alloc.node_id, [])
        for i in range(len(entries) - 1, -1, -1):
            if entries[i].id == alloc.id:
                del entries[i]
                break
        if not entries:
            self.plan.node_update.pop(alloc.node_id, None)
        self.stopped.discard(alloc.id)
        usage = self.stack.usage.get(alloc.node_id) if self.stack else None
        if usage is not None and not alloc.terminal():
            usage.add(alloc, self._mine(alloc), 1)

    def _mine(self, alloc: Allocation) -> bool:
        job = self.job
        return job is not None and alloc.job_id == job.id and alloc.namespace == (job.namespace or "default")

    def usage_of(self, node: Node) -> NodeUsage:
        """What `node` holds with this plan so far, the plan's own copy (only while placing: the
        stack exists)."""
        assert self.stack is not None, "usage_of is called while placing"
        usage = self.stack.usage.get(node.id)
        if usage is None:
            used = self.state.node_used(node.id)
            usage = self.stack.usage[node.id] = base_usage(node, used).private(
                self.stack.job_key if self.job is not None else None)
            if used is not None:
                held: dict[int, int] | None = None
                for stop in self.plan.node_update.get(node.id, ()):   # what this plan stops there
                    a = self.state.alloc(stop.id) if stop.id in self.stopped else None
                    if a is not None and a.node_id == node.id and not a.terminal():
                        if held is None:
                            held = dict(used.ports)
                        usage.add(a, self._mine(a), -1, held)
        return usage

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> SchedulerResult:
        ev, job, res = self.ev, self.job, self.result
        allocs = self.state.allocs_by_job(ev.namespace or "default", ev.job_id)
        deployment = self.state.latest_deployment(ev.namespace or "default", ev.job_id)
        rec = reconcile(job, allocs, self.state.node, ev, self.now, self.rng, deployment)
        self.plan.deployment = rec.deployment
        self.plan.deployment_updates = rec.deployment_updates
        res.desired_updates = rec.desired
        res.followup_evals = rec.followup_evals
        self.plan.annotations = PlanAnnotations.model_construct(desired_tg_updates=rec.desired)
        for s in rec.stops:
            self.stop(s.alloc, s.description, s.client_status)
        for a in rec.alloc_updates:
            self.plan.node_allocation.setdefault(a.node_id, []).append(a)
        if job is not None and not job.stop and any(
                g.places or g.destructive or g.inplace or g.canaries for g in rec.groups):
            self._place_all(job, rec, allocs)
            if res.failed_tg_allocs:
                res.blocked_eval = self._blocked(job)
        return res

    def _place_all(self, job: Job, rec: Reconciled, allocs: list[Allocation]) -> None:
        stack = self.stack = Stack(job, self.state.nodes(), self.rng, node_used=self.state.node_used,
                                   stops=self.plan.node_update)
        replaced = {p.previous.id for g in rec.groups for p in g.destructive if p.previous is not None}
        for a in allocs:
            if not a.terminal() and a.id not in self.stopped and a.id not in replaced:
                node = self.state.node(a.node_id)
                if node is not None:
                    self.live.append((node, a.task_group))
        n_nodes = len(stack.order)
        for gp in rec.groups:
            if not (gp.places or gp.destructive or gp.inplace or gp.canaries):
                continue
            group = Group(job, gp.tg, self.live, n_nodes)
            group.deployment_id = gp.deployment.id if gp.deployment is not None else ""
            du = rec.desired[gp.tg.name]
            destructive = list(gp.destructive)
            for a in gp.inplace:
                node = self.state.node(a.node_id)
                if node is not None and stack.feasible_static(node, group) is None:
                    update: dict[str, Any] = {"job": job, "eval_id": self.ev.id, "modify_time": self.now}
                    if group.deployment_id:   # it joins the new version's deployment, health anew from now
                        update.update(deployment_id=group.deployment_id,
                                      deployment_status=AllocDeploymentStatus(timestamp=rfc3339(self.now)))
                    self.plan.node_allocation.setdefault(a.node_id, []).append(a.model_copy(update=update))
                else:   # the node no longer suits the group: replace it
                    destructive.append(Place(gp.tg, a.name, previous=a))
                    du.in_place_update -= 1
                    du.destructive_update += 1
            for p in gp.canaries:
                self._place(job, stack, group, p)
            for p in destructive:
                self._place(job, stack, group, p, destructive=True)
            for p in gp.places:
                self._place(job, stack, group, p)
            if group.failed is not None:
                self.result.failed_tg_allocs[gp.tg.name] = group.failed

    def _place(self, job: Job, stack: Stack, group: Group, p: Place, destructive: bool = False) -> None:
        tg_name = group.tg.name
        res = self.result
        if group.failed is not None:
            group.failed.coalesced_failures += 1
            res.queued[tg_name] = res.queued.get(tg_name, 0) + 1
            return
        prev = p.previous
        if destructive and prev is not None:
            self.stop(prev, ALLOC_UPDATING)
        penalty = reschedule.penalty_nodes(prev) if (prev is not None and p.reschedule) else None
        node = None
        disk = group.tg.ephemeral_disk
        if prev is not None and disk is not None and disk.sticky:
            # Nomad's findPreferredNode: the previous node first, a reschedule's too (its
            # reschedule penalty still counts in the score the metric shows)
            chosen = stack.select_preferred(prev.node_id, group, self.usage_of, penalty)
            if chosen is not None:
                node, ports, metric = chosen
        if node is None:
            node, ports, metric = stack.select(group, penalty, self.usage_of)
        if node is None:
            if destructive and prev is not None:
                self.unstop(prev)
            group.failed = metric
            res.queued[tg_name] = res.queued.get(tg_name, 0) + 1
            return
        alloc = self._new_alloc(job, group, p, node, ports, metric)
        self.plan.node_allocation.setdefault(node.id, []).append(alloc)
        self.usage_of(node).add(alloc, True)
        self.live.append((node, tg_name))
        group.count_placed(node, tg_name)
        if p.reschedule and prev is not None:
            self.stop(prev, ALLOC_RESCHEDULED)

    def _new_alloc(self, job: Job, group: Group, p: Place, node: Node, ports: Ports | None,
                   metric: AllocMetric) -> Allocation:
        tmpl = group.template
        if tmpl is None:
            tmpl = group.template = self._template(job, group)
        ar = tmpl.allocated_resources
        update: dict[str, Any] = {
            "id": new_id(self.rng), "name": p.name, "node_id": node.id, "node_name": node.name,
            "metrics": metric, "task_states": {},
            # the template's desired transition and task resources are shared, not copied: a
            # stored allocation is never changed in place (fewer objects a stored allocation)
            "allocated_resources": copied(ar, {
                "shared": copied(ar.shared, {"ports": port_mappings(ports) if ports else []})})}
        if group.deployment_id:
            update["deployment_id"] = group.deployment_id
            if p.canary:
                update["deployment_status"] = AllocDeploymentStatus(canary=True)
        prev = p.previous
        if prev is not None:
            update["previous_allocation"] = prev.id
            if p.reschedule:
                update["reschedule_tracker"] = reschedule.new_tracker(
                    prev, group.tg.reschedule_policy or ReschedulePolicy(), self.now)
        return copied(tmpl, update)

    def _template(self, job: Job, group: Group) -> Allocation:
        """What every new allocation of the group shares; copied (shallowly) per placement."""
        now = self.now
        tasks = {name: AllocatedTaskResources.model_construct(
                    cpu=AllocatedCpuResources.model_construct(cpu_shares=cpu),
                    memory=AllocatedMemoryResources.model_construct(memory_mb=mem, memory_max_mb=mmax))
                 for name, cpu, mem, mmax in group.ask.tasks}
        shared = AllocatedSharedResources.model_construct(disk_mb=group.ask.disk, ports=[], networks=None)
        return Allocation.model_construct(
            id="", namespace=job.namespace or "default", eval_id=self.ev.id, name="", node_id="",
            node_name="", job_id=job.id, job=job, task_group=group.tg.name,
            allocated_resources=AllocatedResources.model_construct(
                tasks=tasks, task_lifecycles=None, shared=shared),
            desired_status="run", desired_description="",
            desired_transition=DesiredTransition.model_construct(), deployment_id="", deployment_status=None,
            client_status="pending", client_description="", task_states={},
            previous_allocation="", next_allocation="", reschedule_tracker=None,
            followup_eval_id="", network_status=None, metrics=None, create_index=0,
            modify_index=0, alloc_modify_index=0, create_time=now, modify_time=now)

    # --- results ------------------------------------------------------------------------------
    def _blocked(self, job: Job) -> Evaluation:
        """The eval that waits for capacity to place what is still queued. Built here only, so
        a blocked eval that still cannot place is blocked again as itself, not duplicated."""
        ev = self.ev
        fields: dict[str, Any] = dict(
            status="blocked", status_description=BLOCKED_DESCRIPTION,
            escaped_computed_class=True,
            queued_allocations=dict(self.result.queued), snapshot_index=self.state.index,
            modify_time=self.now)
        if ev.status == "blocked":
            return ev.model_copy(update=fields)
        return Evaluation(
            id=new_id(self.rng), namespace=ev.namespace, priority=job.priority or ev.priority,
            type=job.type or ev.type, triggered_by=TRIGGER_QUEUED_ALLOCS, job_id=job.id,
            job_modify_index=job.job_modify_index, previous_eval=ev.id, create_time=self.now,
            **fields)
