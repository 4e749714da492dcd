"""What must change for a job: allocations to stop, place, update (Nomad reconcile_cluster.go).

Per group: allocs on down/missing nodes are lost (stop + replace), those the drainer marked
(DesiredTransition.Migrate) migrate (stop + replace), failed ones are rescheduled now or later
by the reschedule policy, excess ones stop (old versions, then the highest name index first),
old-version ones are updated in place or destructively, and missing name indexes below
``count`` are placed.

Deployments (service jobs whose group's `update` has max_parallel > 0): a job version with
changes gets a deployment; its destructive updates go `max_parallel` at a time, less the ones
of the deployment not yet healthy; with `canary = N`, N canaries of the new version are placed
beside the old allocations and nothing else changes until the deployment is promoted. A paused
or failed deployment changes nothing more; a newer job version (or a stop) cancels the active
deployment of the older one. No disconnect handling.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from yurt.structs import (Allocation, Deployment, DeploymentState, DesiredUpdates,
                          Evaluation, Job, Node, TaskGroup, merged_update)
from yurt.structs import deployment_status as ds

from . import reschedule
from .diff import tasks_updated
from .util import (ALLOC_LOST, ALLOC_MIGRATING, ALLOC_NOT_NEEDED, ALLOC_UPDATING,
                   LOST_NODE_STATUSES, alloc_name, new_id)

DEFAULT_KILL_TIMEOUT_NS = 5_000_000_000   # a task's kill_timeout when it has none (Nomad's 5s)


@dataclass
class Stop:
    alloc: Allocation
    description: str
    client_status: str = ""


@dataclass
class Place:
    tg: TaskGroup
    name: str
    previous: Allocation | None = None
    reschedule: bool = False      # the previous alloc failed: penalise its nodes, track the event
    canary: bool = False          # placed beside the allocation it will replace (not stopping it)


@dataclass
class GroupPlan:
    tg: TaskGroup
    places: list[Place] = field(default_factory=list)
    destructive: list[Place] = field(default_factory=list)   # the placer stops the previous
    inplace: list[Allocation] = field(default_factory=list)
    canaries: list[Place] = field(default_factory=list)
    deployment: Deployment | None = None      # what its new allocations join


@dataclass
class Reconciled:
    stops: list[Stop] = field(default_factory=list)
    groups: list[GroupPlan] = field(default_factory=list)
    alloc_updates: list[Allocation] = field(default_factory=list)   # FollowupEvalID annotations
    followup_evals: list[Evaluation] = field(default_factory=list)
    desired: dict[str, DesiredUpdates] = field(default_factory=dict)
    deployment: Deployment | None = None          # new or changed: new allocations join it
    deployment_updates: list[Deployment] = field(default_factory=list)   # others (cancelled)


def _same_version(alloc: Allocation, job: Job) -> bool:
    aj = alloc.job
    return aj is None or aj is job or (aj.version == job.version and aj.create_index == job.create_index)


def reconcile(job: Job | None, allocs: list[Allocation], node_of: Callable[[str], Node | None],
              ev: Evaluation, now_ns: int, rng: random.Random,
              deployment: Deployment | None = None) -> Reconciled:
    """`deployment` is the job's latest deployment, if any."""
    out = Reconciled()
    by_group: dict[str, list[Allocation]] = {}
    for a in allocs:
        by_group.setdefault(a.task_group, []).append(a)

    if job is None or job.stop:
        if deployment is not None and deployment.active():
            out.deployment_updates.append(_ended(deployment, ds.DEPLOYMENT_CANCELLED, ds.DESC_STOPPED, now_ns))
        for name, group_allocs in by_group.items():
            du = out.desired.setdefault(name, DesiredUpdates())
            for a in group_allocs:
                if not a.terminal():
                    out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
                    du.stop += 1
        return out

    dep = deployment
    if dep is not None and (dep.job_version != job.version or dep.job_create_index != job.create_index):
        if dep.active():
            out.deployment_updates.append(_ended(dep, ds.DEPLOYMENT_CANCELLED, ds.DESC_NEWER_JOB, now_ns))
        dep = None          # a deployment of another version: this one gets its own if it changes anything
    # its own random stream: making a deployment must not change where allocations go
    ctx = _Deploying(job, dep, random.Random(f"deployment:{ev.id}:{job.job_modify_index}"), now_ns)

    groups = {tg.name: tg for tg in job.task_groups or []}
    for name, group_allocs in by_group.items():
        if name not in groups:
            du = out.desired.setdefault(name, DesiredUpdates())
            for a in group_allocs:
                if not a.terminal():
                    out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
                    du.stop += 1
    later: list[tuple[int, Allocation]] = []
    wakes: list[int] = []
    for tg in job.task_groups or []:
        du = out.desired[tg.name] = DesiredUpdates()
        gp = GroupPlan(tg)
        out.groups.append(gp)
        _group(job, tg, by_group.get(tg.name, []), node_of, ev, now_ns, out, gp, du, later, ctx, wakes)
    _followups(job, ev, later, rng, out)
    _wake_ups(job, ev, wakes, rng, out)
    out.deployment = ctx.changed()
    return out


def _ended(d: Deployment, status: str, description: str, now_ns: int) -> Deployment:
    return d.model_copy(update={"status": status, "status_description": description, "modify_time": now_ns})


class _Deploying:
    """The deployment of the job's current version: the one there is, or a new one made the
    first time a group of this version has something to roll out."""

    def __init__(self, job: Job, current: Deployment | None, rng: random.Random, now_ns: int) -> None:
        self.job, self.current, self.rng, self.now = job, current, rng, now_ns
        self.new: Deployment | None = None
        self.dirty = False

    @property
    def deployment(self) -> Deployment | None:
        return self.new or self.current

    def active(self) -> Deployment | None:
        d = self.deployment
        return d if d is not None and d.active() else None

    def state(self, tg: TaskGroup) -> DeploymentState | None:
        d = self.deployment
        return d.task_groups.get(tg.name) if d is not None else None

    def join(self, tg: TaskGroup, count: int, canaries: int) -> Deployment | None:
        """The deployment new allocations of `tg` join (made or extended here); None when this
        version's deployment is over (it succeeded or failed: nothing joins it any more)."""
        up = merged_update(self.job.update, tg.update)
        if self.current is not None and self.new is None and not self.current.active():
            return None
        if self.new is None and self.current is None:
            job = self.job
            self.new = Deployment(
                id=new_id(self.rng), namespace=job.namespace or "default", job_id=job.id,
                job_version=job.version or 0, job_modify_index=job.job_modify_index,
                job_spec_modify_index=job.job_modify_index, job_create_index=job.create_index,
                eval_priority=job.priority or 50, create_time=self.now, modify_time=self.now)
        d = self.new or self.current
        assert d is not None
        if tg.name not in d.task_groups:
            st = DeploymentState(auto_revert=bool(up.auto_revert), auto_promote=bool(up.auto_promote),
                                 progress_deadline=up.progress_deadline or 0, desired_total=count,
                                 desired_canaries=canaries)
            d = d.model_copy(update={"task_groups": {**d.task_groups, tg.name: st}})
            self._set(d)
        elif canaries and not d.task_groups[tg.name].desired_canaries:
            st = d.task_groups[tg.name].model_copy(update={"desired_canaries": canaries})
            self._set(d.model_copy(update={"task_groups": {**d.task_groups, tg.name: st}}))
        if d.has_canaries_to_promote() and d.status == ds.DEPLOYMENT_RUNNING:
            auto = all(s.auto_promote for s in d.task_groups.values() if s.desired_canaries)
            want = ds.DESC_AUTO_PROMOTION if auto else ds.DESC_NEEDS_PROMOTION
            if d.status_description != want:
                self._set((self.new or self.current or d).model_copy(update={"status_description": want}))
        return self.new or self.current

    def _set(self, d: Deployment) -> None:
        if self.new is not None:
            self.new = d
        else:
            self.current = d
            self.dirty = True

    def changed(self) -> Deployment | None:
        return self.new if self.new is not None else (self.current if self.dirty else None)


def _group(job: Job, tg: TaskGroup, allocs: list[Allocation], node_of: Callable[[str], Node | None],
           ev: Evaluation, now_ns: int, out: Reconciled, gp: GroupPlan, du: DesiredUpdates,
           later: list[tuple[int, Allocation]], ctx: _Deploying, wakes: list[int]) -> None:
    count = tg.count or 0
    up = merged_update(job.update, tg.update)
    deploys = job.type in (None, "", "service") and (up.max_parallel or 0) > 0
    current = ctx.deployment
    canaries: list[Allocation] = []     # of this version's deployment, not yet promoted
    batch = job.type == "batch"
    policy = tg.reschedule_policy
    untainted: list[Allocation] = []
    lost: list[Allocation] = []
    migrate: list[Allocation] = []
    resched_now: list[Allocation] = []
    held: list[Allocation] = []            # lost, and their client may still be running them
    wait = client_stop_wait(tg)

    for a in allocs:
        if a.server_terminal():
            if a.client_status == "lost" and wait and a.modify_time + wait > now_ns:
                held.append(a)             # its name stays taken until its client has stopped it
            continue                       # already stopped by the server
        if a.next_allocation and a.client_terminal():
            continue                       # already replaced
        cs = a.client_status
        if cs == "complete":
            if batch and _same_version(a, job):
                untainted.append(a)        # a batch alloc that ran successfully is done
            continue
        if cs == "lost":
            continue
        if cs == "failed":
            if a.desired_transition.force_reschedule:   # `job eval -force-reschedule`: now, whatever the policy
                resched_now.append(a)
                continue
            when, ok = reschedule.next_reschedule_time(a, policy)
            if ok and (a.followup_eval_id == ev.id or when - now_ns <= reschedule.RESCHEDULE_WINDOW_NS):
                resched_now.append(a)
                continue
            untainted.append(a)            # keeps its name until it is rescheduled (or forever)
            if ok and not a.followup_eval_id:
                later.append((when, a))
                du.reschedule_later += 1
            continue
        node = node_of(a.node_id)
        if (current is not None and a.deployment_id == current.id and a.deployment_status is not None
                and a.deployment_status.canary and node is not None and node.status not in LOST_NODE_STATUSES):
            canaries.append(a)             # beside the count until the deployment is promoted
        elif node is None or node.status in LOST_NODE_STATUSES:
            lost.append(a)
        elif a.desired_transition.migrate:   # the drainer marks them, max_parallel at a time
            migrate.append(a)
        else:
            untainted.append(a)

    if count == 0:
        for a in untainted + migrate:
            if not a.client_terminal():
                out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
                du.stop += 1
        for a in lost:
            out.stops.append(Stop(a, ALLOC_LOST, "lost"))
            du.stop += 1
        return

    # Lost allocs stop for sure; they are replaced below while there is room.
    for a in lost:
        out.stops.append(Stop(a, ALLOC_LOST, "lost"))
        du.stop += 1

    # A promoted deployment's canaries take the place of the old allocations of their names.
    state = ctx.state(tg)
    if state is not None and state.promoted and state.placed_canaries:
        taken = {a.name for a in untainted if a.id in state.placed_canaries and _same_version(a, job)}
        replaced = [a for a in untainted if a.name in taken and not _same_version(a, job)]
        for a in replaced:
            if not a.client_terminal():
                out.stops.append(Stop(a, ALLOC_UPDATING))
                du.stop += 1
        untainted = [a for a in untainted if a not in replaced]

    # Too many: stop migrating ones first, then the highest name index.
    excess = len(untainted) + len(migrate) - count
    if excess > 0:
        drop_migrate = sorted(migrate, key=lambda a: -a.index)[:excess]
        for a in drop_migrate:
            out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
            du.stop += 1
        migrate = [a for a in migrate if a not in drop_migrate]
        excess -= len(drop_migrate)
        if excess > 0:
            # terminal (failed, done) ones go first, then old versions, then by highest index
            ordered = sorted(untainted, key=lambda a: (not a.client_terminal(), _same_version(a, job), -a.index))
            drop = ordered[:excess]
            drop_ids = {a.id for a in drop}
            for a in drop:
                if not a.client_terminal():
                    out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
                    du.stop += 1
            untainted = [a for a in untainted if a.id not in drop_ids]

    # Updates of the ones that stay.
    destructive: list[Allocation] = []
    for a in untainted:
        if _same_version(a, job) or a.client_status == "complete":
            du.ignore += 1
        elif a.job is None or tasks_updated(a.job.group(tg.name) or tg, tg):  # None: see _same_version
            destructive.append(a)
        else:
            gp.inplace.append(a)
            du.in_place_update += 1
    promoted = state is not None and state.promoted
    want_canaries = deploys and (up.canary or 0) > 0 and bool(destructive or canaries) and not promoted
    if want_canaries and (ctx.active() is not None or current is None):
        have = {a.name for a in canaries}
        for a in sorted(destructive, key=lambda a: a.index):
            if len(have) >= (up.canary or 0):
                break
            if a.name not in have:
                gp.canaries.append(Place(tg, a.name, canary=True))
                have.add(a.name)
                du.canary += 1
        du.ignore += len(destructive) + len(canaries)   # the old ones wait for the promotion
        destructive = []
    elif want_canaries:
        du.ignore += len(destructive)                   # this version's deployment is over
        destructive = []
    limit = len(destructive)
    if deploys:
        active = ctx.active()
        if current is not None and active is None:
            limit = 0                                   # finished, failed or cancelled: no more
        elif active is not None and active.status == ds.DEPLOYMENT_PAUSED:
            limit = 0
        else:
            in_flight = sum(1 for a in untainted if active is not None and a.deployment_id == active.id
                            and _same_version(a, job) and not a.client_terminal()
                            and (a.deployment_status is None or a.deployment_status.healthy is not True))
            limit = max(0, (up.max_parallel or 0) - in_flight)
    for a in sorted(destructive, key=lambda a: a.index)[:limit]:
        gp.destructive.append(Place(tg, a.name, previous=a))
        du.destructive_update += 1
    du.ignore += max(0, len(destructive) - limit)

    for a in migrate:
        out.stops.append(Stop(a, ALLOC_MIGRATING))
        gp.places.append(Place(tg, a.name, previous=a))
        du.migrate += 1

    used_names = {a.name for a in untainted} | {a.name for a in migrate}
    room = count - len(untainted) - len(migrate)

    # Lost allocs whose group has stop_on_client_after: their client stops them by itself once it
    # has been cut off that long (plus the kill timeout); only then are they replaced, so that
    # two copies never run. Their names are kept until then; a follow-up evaluation comes then.
    for a in sorted(held + (lost if wait else []), key=lambda a: a.index):
        if a.name in used_names:
            continue
        used_names.add(a.name)
        room -= 1
        if a not in held:   # marked lost now: one evaluation when it may be replaced (held: asked already)
            wakes.append(now_ns + wait)
        du.ignore += 1

    # Replacements for lost and failed allocs keep their names (lowest index first).
    for a in sorted(lost + resched_now, key=lambda a: a.index):
        if room <= 0 or a.name in used_names:
            continue
        is_failed = a.client_status == "failed"
        gp.places.append(Place(tg, a.name, previous=a, reschedule=is_failed))
        used_names.add(a.name)
        room -= 1
        if is_failed:
            du.reschedule_now += 1
        else:
            du.place += 1

    # Missing names below count.
    i = 0
    while room > 0:
        name = alloc_name(job.id, tg.name, i)
        if name not in used_names:
            gp.places.append(Place(tg, name))
            used_names.add(name)
            du.place += 1
            room -= 1
        i += 1

    if deploys and (gp.places or gp.destructive or gp.inplace or gp.canaries):
        gp.deployment = ctx.join(tg, count, (up.canary or 0) if want_canaries else 0)


def client_stop_wait(tg: TaskGroup) -> int:
    """How long after an allocation of `tg` is marked lost its client has surely stopped it by
    itself: the group's stop_on_client_after and its longest kill_timeout (Nomad's
    WaitClientStop); 0 when the group makes no such promise."""
    after = tg.stop_on_client_after()
    if not after:
        return 0
    return after + max([t.kill_timeout or DEFAULT_KILL_TIMEOUT_NS for t in tg.tasks or []] or [DEFAULT_KILL_TIMEOUT_NS])


def _wake_ups(job: Job, ev: Evaluation, wakes: list[int], rng: random.Random, out: Reconciled) -> None:
    """One evaluation at each time lost allocations may be replaced (batched as failures are)."""
    start = 0
    for when in sorted(set(wakes)):
        if start and when - start <= reschedule.FOLLOWUP_BATCH_NS:
            continue
        start = when
        out.followup_evals.append(Evaluation(
            id=new_id(rng), namespace=job.namespace or "default", priority=job.priority or 50,
            type=job.type or "service", triggered_by="alloc-lost", job_id=job.id,
            job_modify_index=job.job_modify_index, status="pending",
            status_description="created to replace lost allocations once their client has stopped them "
                               "(stop_on_client_after)",
            wait_until=when + reschedule.FOLLOWUP_BATCH_NS, previous_eval=ev.id))


def _followups(job: Job, ev: Evaluation, later: list[tuple[int, Allocation]], rng: random.Random,
               out: Reconciled) -> None:
    """One follow-up eval per batch of failures due within a few seconds of each other."""
    later.sort(key=lambda x: (x[0], x[1].id))
    current: Evaluation | None = None
    start = 0
    for when, a in later:
        if current is None or when - start > reschedule.FOLLOWUP_BATCH_NS:
            start = when
            current = Evaluation(
                id=new_id(rng), namespace=job.namespace or "default",
                priority=job.priority or 50, type=job.type or "service",
                triggered_by="alloc-failure", job_id=job.id,
                job_modify_index=job.job_modify_index, status="pending",
                status_description="created for delayed rescheduling",
                wait_until=when, previous_eval=ev.id)
            out.followup_evals.append(current)
        out.alloc_updates.append(a.model_copy(update={"followup_eval_id": current.id}))

