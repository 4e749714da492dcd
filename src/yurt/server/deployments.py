"""Deployments on the server: the watcher (a leader's thread, Nomad's deploymentwatcher) and
what the API asks of deployments (promote, fail, pause, set health), job versions' stability and
reverts.

The scheduler makes a deployment when a version of a service job changes something and rolls it
out `max_parallel` at a time (see scheduler/reconcile.py). The watcher, a few times a second,
for each active deployment:
* decides the health of its allocations (`health.HealthJudge`, by the group's `update` block;
  not with `health_check = "manual"`), recorded as their DeploymentStatus; the store counts
  them into the deployment (placed, healthy, unhealthy) and pushes the progress deadline out;
  each change gives the job an evaluation, so the scheduler rolls the next ones;
* fails it on an unhealthy allocation that cannot be replaced (`progress_deadline = 0`, or no
  reschedule attempt left), or when a group makes no progress by its deadline;
* promotes it when every group with canaries has `auto_promote` and healthy canaries;
* marks it successful when every group has its healthy allocations (and promoted canaries),
  and the job version stable.
A failed deployment with `auto_revert` registers the latest stable version again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from yurt.errors import InvalidInput, NotFound
from yurt.scheduler.reschedule import next_reschedule_time
from yurt.structs import AllocDeploymentStatus, Allocation, Deployment, Evaluation, Job, merged_update
from yurt.structs import deployment_status as ds
from yurt.structs.evaluation import EVAL_PENDING
from yurt.structs.times import parse_rfc3339, rfc3339
from yurt.state import Snapshot
from yurt.state.derive import spec_changed

from .health import HealthJudge

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("yurt.server.deployments")

TICK = 0.25
TRIGGER_DEPLOYMENT = "deployment-watcher"


class Deployments:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.store = server.store
        self._judge = HealthJudge(server.catalog.checks_of)
        self._stop = threading.Event()
        self._lock = threading.Lock()     # the watcher and the API's writes, one at a time
        # deployments whose last look changed nothing, with what it saw and until when only a
        # change of what it saw can change the answer: d.id -> (job, d, allocs, due)
        self._quiet: dict[str, tuple[Job, Deployment, list[Allocation], int]] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._run, name="yurt-deployments", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick(time.time_ns())
            except Exception:
                log.exception("watching deployments failed; trying again")

    # -- the watcher ------------------------------------------------------------------------
    def tick(self, now: int) -> None:
        snap = self.store.snapshot()
        active = [d for d in snap.deployments() if d.active()]
        watched: set[str] = set()
        for d in active:
            with self._lock:
                watched |= self._watch(snap, d, now)
        self._judge.keep_only(watched)
        ids = {d.id for d in active}
        for gone in [i for i in self._quiet if i not in ids]:
            del self._quiet[gone]

    def _watch(self, snap: Snapshot, d: Deployment, now: int) -> set[str]:
        job = snap.job(d.namespace, d.job_id)
        if job is None or job.version != d.job_version or job.create_index != d.job_create_index:
            return set()        # the scheduler cancels it on the job's next evaluation
        allocs = [a for a in snap.allocs_by_job(d.namespace, d.job_id) if a.deployment_id == d.id]
        quiet = self._quiet.pop(d.id, None)
        if (quiet is not None and quiet[0] is job and quiet[1] is d and now < quiet[3]
                and len(quiet[2]) == len(allocs) and all(x is y for x, y in zip(quiet[2], allocs, strict=True))):
            self._quiet[d.id] = quiet     # the same job, deployment and allocations, before anything is due
            return {a.id for a in allocs}
        health: dict[str, AllocDeploymentStatus] = {}
        groups = {tg.name: (tg, merged_update(job.update, tg.update)) for tg in job.task_groups or []}
        for a in allocs:
            if a.server_terminal() or (a.deployment_status is not None and a.deployment_status.has_health()):
                continue
            tg, up = groups.get(a.task_group, (None, None))
            if tg is None or up is None or up.health_check == "manual":
                continue
            healthy = self._judge.health(snap, a, tg, health_check=up.health_check or "checks",
                                         min_healthy_time=up.min_healthy_time or 0,
                                         healthy_deadline=up.healthy_deadline or 0, now=now)
            if healthy is not None:
                canary = a.deployment_status.canary if a.deployment_status is not None else False
                health[a.id] = AllocDeploymentStatus(healthy=healthy, timestamp=rfc3339(now), canary=canary)
        if health:
            ev = self._eval(job, d)
            self.store.update_deployment(self.store.deployment(d.id) or d, health=health, evals=[ev])
            self.server.broker.enqueue(ev)
            d = self.store.deployment(d.id) or d
            allocs = [self.store.alloc(a.id) or a for a in allocs]
        if d.status != ds.DEPLOYMENT_RUNNING:
            return {a.id for a in allocs}
        reason = self._failure(job, d, allocs, now)
        if reason:
            self._fail(job, d, reason, now)
        elif self._may_auto_promote(d, allocs):
            self._promote(job, d, None, now)
        elif self._done(d):
            ev = self._eval(job, d)
            done = d.model_copy(update={"status": ds.DEPLOYMENT_SUCCESSFUL,
                                        "status_description": ds.DESC_SUCCESSFUL, "modify_time": now})
            self.store.update_deployment(done, stable=(d.job_version, True), evals=[ev])
            self.server.broker.enqueue(ev)
            log.info("deployment %s of job %s version %d successful", d.id[:8], d.job_id, d.job_version)
        elif not health:
            due = self._quiet_until(d, allocs, groups, now)
            if due > now:
                self._quiet[d.id] = (job, d, allocs, due)
        return {a.id for a in allocs}

    @staticmethod
    def _quiet_until(d: Deployment, allocs: list[Allocation], groups: dict[str, Any], now: int) -> int:
        """Until when looking again at `d` with the same job, deployment and allocations would
        decide nothing (`now`: it might; look every tick). Only allocations the client has
        not reported on yet are waited out: their health is undecided until their
        healthy_deadline (HealthJudge); a running one depends on time and checks, one decided
        unhealthy on its reschedule window, so either keeps the deployment looked at. A group's
        progress deadline is due at its time."""
        due = 2**63
        for a in allocs:
            if a.server_terminal():
                continue
            status = a.deployment_status
            if status is not None and status.has_health():
                if status.healthy is False:
                    return now
                continue
            tg, up = groups.get(a.task_group, (None, None))
            if tg is None or up is None or up.health_check == "manual":
                continue
            if a.client_status != "pending" or a.task_states:
                return now
            start = a.create_time
            if status is not None and status.healthy is None:
                start = max(start, parse_rfc3339(status.timestamp) or 0)
            due = min(due, start + (up.healthy_deadline or 0))
        for st in d.task_groups.values():
            by = parse_rfc3339(st.require_progress_by) or 0
            if st.progress_deadline and by > 0:
                due = min(due, by)
        return due

    @staticmethod
    def _done(d: Deployment) -> bool:
        return all(st.healthy_allocs >= st.desired_total and (st.desired_canaries == 0 or st.promoted)
                   for st in d.task_groups.values())

    def _failure(self, job: Job, d: Deployment, allocs: list[Allocation], now: int) -> str:
        """Why the deployment fails now ("" if it does not): Nomad's description, then the
        first allocation's reason in parentheses (the task that failed or kept exiting, the check
        that never passed)."""
        snap = self.store.snapshot()
        for a in allocs:
            status = a.deployment_status
            if status is None or status.healthy is not False or a.server_terminal():
                continue
            st = d.task_groups.get(a.task_group)
            tg = job.group(a.task_group)
            if st is None or tg is None:
                continue
            _, can_retry = next_reschedule_time(a, tg.reschedule_policy)
            if st.progress_deadline == 0 or not can_retry:
                return f"{ds.DESC_UNHEALTHY} (allocation {a.id[:8]}: {self._judge.why(snap, a, tg)})"
        for name, st in d.task_groups.items():
            by = parse_rfc3339(st.require_progress_by) or 0
            if not st.progress_deadline or by <= 0 or now < by:
                continue
            healthy_canaries = sum(1 for a in allocs if a.id in st.placed_canaries and _healthy(a))
            if st.desired_canaries and not st.promoted and healthy_canaries >= st.desired_canaries:
                continue        # waiting for a promotion is not a lack of progress
            if st.healthy_allocs >= st.desired_total:
                continue
            tg = job.group(name)
            stuck = next((a for a in allocs if a.task_group == name and not _healthy(a) and not a.server_terminal()),
                         None)
            if stuck is None or tg is None:
                return ds.DESC_PROGRESS_DEADLINE
            return f"{ds.DESC_PROGRESS_DEADLINE} (allocation {stuck.id[:8]}: {self._judge.why(snap, stuck, tg)})"
        return ""

    def _may_auto_promote(self, d: Deployment, allocs: list[Allocation]) -> bool:
        groups = [(n, st) for n, st in d.task_groups.items() if st.desired_canaries and not st.promoted]
        if not groups or not all(st.auto_promote for _, st in groups):
            return False
        return all(sum(1 for a in allocs if a.id in st.placed_canaries and _healthy(a)) >= st.desired_canaries
                   for _, st in groups)

    # -- state changes ------------------------------------------------------------------------
    def _eval(self, job: Job, d: Deployment) -> Evaluation:
        now = time.time_ns()
        return Evaluation(id=str(uuid.uuid4()), namespace=d.namespace, job_id=d.job_id,
                          priority=job.priority or 50, type=job.type or "service",
                          triggered_by=TRIGGER_DEPLOYMENT, job_modify_index=job.job_modify_index,
                          deployment_id=d.id, status=EVAL_PENDING, create_time=now, modify_time=now)

    def _fail(self, job: Job, d: Deployment, reason: str, now: int) -> dict[str, Any]:
        """Fail `d`; with auto_revert on a group, register the latest stable version again."""
        description = reason
        revert_to: Job | None = None
        if any(st.auto_revert for st in d.task_groups.values()):
            stable = [v for v in self.store.job_versions(d.namespace, d.job_id)
                      if v.stable and v.version != job.version]
            target = max(stable, key=lambda v: v.version) if stable else None
            if target is None:
                description += " - no stable job version to auto revert to"
            elif not spec_changed(target, job):
                description += (f" - not rolling back to stable job version {target.version} as current job "
                                "has same specification")
            else:
                description += f" - rolling back to job version {target.version}"
                revert_to = target
        ev = self._eval(job, d)
        failed = d.model_copy(update={"status": ds.DEPLOYMENT_FAILED, "status_description": description,
                                      "modify_time": now})
        index = self.store.update_deployment(failed, evals=[ev])
        self.server.broker.enqueue(ev)
        log.warning("deployment %s of job %s failed: %s", d.id[:8], d.job_id, description)
        out: dict[str, Any] = {"EvalID": ev.id, "EvalCreateIndex": index, "DeploymentModifyIndex": index,
                               "RevertedJobVersion": None, "Index": index}
        if revert_to is not None:
            reg = self.server.revert_job(d.namespace, d.job_id, revert_to.version)
            out.update(RevertedJobVersion=revert_to.version, EvalID=reg["EvalID"], Index=reg["Index"])
        return out

    def _promote(self, job: Job, d: Deployment, groups: list[str] | None, now: int) -> dict[str, Any]:
        allocs = [a for a in self.store.allocs_by_job(d.namespace, d.job_id) if a.deployment_id == d.id]
        targets = [g for g, st in d.task_groups.items() if st.desired_canaries and not st.promoted
                   and (groups is None or g in groups)]
        if not targets:
            raise InvalidInput(f"deployment {d.id} has no canaries to promote"
                               + (f" in group(s) {', '.join(groups)}" if groups else ""))
        new_states = dict(d.task_groups)
        promoted: list[str] = []
        for g in targets:
            st = d.task_groups[g]
            healthy = [a.id for a in allocs if a.id in st.placed_canaries and _healthy(a)]
            if len(healthy) < st.desired_canaries:
                raise InvalidInput(f'Task group "{g}" has {len(healthy)}/{st.desired_canaries} healthy allocations')
            by = rfc3339(now + st.progress_deadline) if st.progress_deadline else st.require_progress_by
            new_states[g] = st.model_copy(update={"promoted": True, "require_progress_by": by})
            promoted += st.placed_canaries
        ev = self._eval(job, d)
        new = d.model_copy(update={"task_groups": new_states, "modify_time": now,
                                   "status_description": ds.DESC_RUNNING})
        if new.has_canaries_to_promote():
            new = new.model_copy(update={"status_description": ds.DESC_NEEDS_PROMOTION})
        index = self.store.update_deployment(new, evals=[ev], canaries_promoted=promoted)
        self.server.broker.enqueue(ev)
        log.info("deployment %s of job %s promoted", d.id[:8], d.job_id)
        return {"EvalID": ev.id, "EvalCreateIndex": index, "DeploymentModifyIndex": index,
                "RevertedJobVersion": None, "Index": index}

    # -- what the API asks ----------------------------------------------------------------------
    def _get(self, deployment_id: str) -> tuple[Deployment, Job]:
        d = self.store.deployment(deployment_id)
        if d is None:
            raise NotFound("deployment not found")
        job = self.store.job(d.namespace, d.job_id)
        if job is None:
            raise NotFound(f"deployment {deployment_id}: its job {d.job_id!r} no longer exists")
        return d, job

    def promote(self, deployment_id: str, groups: list[str] | None = None) -> dict[str, Any]:
        with self._lock:
            d, job = self._get(deployment_id)
            if not d.active():
                raise InvalidInput("can't promote terminal deployment")
            if d.status == ds.DEPLOYMENT_PAUSED:
                raise InvalidInput("can't promote a paused deployment: resume it first")
            return self._promote(job, d, groups, time.time_ns())

    def fail(self, deployment_id: str) -> dict[str, Any]:
        with self._lock:
            d, job = self._get(deployment_id)
            if not d.active():
                raise InvalidInput("can't fail terminal deployment")
            return self._fail(job, d, ds.DESC_MARKED_FAILED, time.time_ns())

    def pause(self, deployment_id: str, pause: bool) -> dict[str, Any]:
        with self._lock:
            d, job = self._get(deployment_id)
            if not d.active():
                raise InvalidInput(f"can't {'pause' if pause else 'resume'} terminal deployment")
            now = time.time_ns()
            groups = {g: st.model_copy(update={"require_progress_by": rfc3339(now + st.progress_deadline)})
                      if st.progress_deadline and not pause else st for g, st in d.task_groups.items()}
            new = d.model_copy(update={
                "status": ds.DEPLOYMENT_PAUSED if pause else ds.DEPLOYMENT_RUNNING,
                "status_description": ds.DESC_PAUSED if pause else ds.DESC_RUNNING,
                "task_groups": groups, "modify_time": now})
            evals = [] if pause else [self._eval(job, d)]
            index = self.store.update_deployment(new, evals=evals)
            for ev in evals:
                self.server.broker.enqueue(ev)
            return {"EvalID": evals[0].id if evals else "", "EvalCreateIndex": index if evals else 0,
                    "DeploymentModifyIndex": index, "RevertedJobVersion": None, "Index": index}

    def set_health(self, deployment_id: str, healthy: list[str], unhealthy: list[str]) -> dict[str, Any]:
        with self._lock:
            d, job = self._get(deployment_id)
            if not d.active():
                raise InvalidInput("can't set health of allocations for a terminal deployment")
            if not healthy and not unhealthy:
                raise InvalidInput("give at least one allocation ID (HealthyAllocationIDs or UnhealthyAllocationIDs)")
            now = time.time_ns()
            health: dict[str, AllocDeploymentStatus] = {}
            for ids, flag in ((healthy, True), (unhealthy, False)):
                for alloc_id in ids:
                    a = self.store.alloc(alloc_id)
                    if a is None or a.deployment_id != d.id:
                        raise InvalidInput(f"allocation {alloc_id} is not part of deployment {d.id}")
                    canary = a.deployment_status.canary if a.deployment_status is not None else False
                    health[alloc_id] = AllocDeploymentStatus(healthy=flag, timestamp=rfc3339(now), canary=canary)
            ev = self._eval(job, d)
            index = self.store.update_deployment(d, health=health, evals=[ev])
            self.server.broker.enqueue(ev)
            return {"EvalID": ev.id, "EvalCreateIndex": index, "DeploymentModifyIndex": index,
                    "RevertedJobVersion": None, "Index": index}


def _healthy(a: Allocation) -> bool:
    return a.deployment_status is not None and a.deployment_status.healthy is True and not a.server_terminal()
