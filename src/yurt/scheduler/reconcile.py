"""What must change for a job: allocations to stop, place, update (Nomad reconcile_cluster.go).

Simplified: no deployments, canaries or disconnect handling; destructive updates all at once.
Per group: allocs on down/missing nodes are lost (stop + replace), those the drainer marked
(DesiredTransition.Migrate) migrate (stop + replace), failed ones are rescheduled now or later
by the reschedule policy, excess ones stop highest name index first, old-version ones are
updated in place or destructively, and missing name indexes below ``count`` are placed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from yurt.structs import (Allocation, DesiredUpdates, Evaluation, Job, Node, TaskGroup)

from . import reschedule
from .diff import tasks_updated
from .util import (ALLOC_LOST, ALLOC_MIGRATING, ALLOC_NOT_NEEDED,
                   LOST_NODE_STATUSES, alloc_name, new_id)


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


@dataclass
class GroupPlan:
    tg: TaskGroup
    places: list[Place] = field(default_factory=list)
    destructive: list[Place] = field(default_factory=list)   # the placer stops the previous
    inplace: list[Allocation] = field(default_factory=list)


@dataclass
class Reconciled:
    stops: list[Stop] = field(default_factory=list)
    groups: list[GroupPlan] = field(default_factory=list)
    alloc_updates: list[Allocation] = field(default_factory=list)   # FollowupEvalID annotations
    followup_evals: list[Evaluation] = field(default_factory=list)
    desired: dict[str, DesiredUpdates] = field(default_factory=dict)


def _same_version(alloc: Allocation, job: Job) -> bool:
    aj = alloc.job
    return aj is None or aj is job or (aj.version == job.version and aj.create_index == job.create_index)


def reconcile(job: Job | None, allocs: list[Allocation], node_of: Callable[[str], Node | None],
              ev: Evaluation, now_ns: int, rng: random.Random) -> Reconciled:
    out = Reconciled()
    by_group: dict[str, list[Allocation]] = {}
    for a in allocs:
        by_group.setdefault(a.task_group, []).append(a)

    if job is None or job.stop:
        for name, group_allocs in by_group.items():
            du = out.desired.setdefault(name, DesiredUpdates())
            for a in group_allocs:
                if not a.terminal():
                    out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
                    du.stop += 1
        return out

    groups = {tg.name: tg for tg in job.task_groups or []}
    for name, group_allocs in by_group.items():
        if name not in groups:
            du = out.desired.setdefault(name, DesiredUpdates())
            for a in group_allocs:
                if not a.terminal():
                    out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
                    du.stop += 1
    later: list[tuple[int, Allocation]] = []
    for tg in job.task_groups or []:
        du = out.desired[tg.name] = DesiredUpdates()
        gp = GroupPlan(tg)
        out.groups.append(gp)
        _group(job, tg, by_group.get(tg.name, []), node_of, ev, now_ns, out, gp, du, later)
    _followups(job, ev, later, rng, out)
    return out


def _group(job: Job, tg: TaskGroup, allocs: list[Allocation], node_of: Callable[[str], Node | None],
           ev: Evaluation, now_ns: int, out: Reconciled, gp: GroupPlan, du: DesiredUpdates,
           later: list[tuple[int, Allocation]]) -> None:
    count = tg.count or 0
    batch = job.type == "batch"
    policy = tg.reschedule_policy
    untainted: list[Allocation] = []
    lost: list[Allocation] = []
    migrate: list[Allocation] = []
    resched_now: list[Allocation] = []

    for a in allocs:
        if a.server_terminal():
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
        if node is None or node.status in LOST_NODE_STATUSES:
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
            # terminal (failed, done) ones go first, then live ones by highest index
            ordered = sorted(untainted, key=lambda a: (not a.client_terminal(), -a.index))
            drop = ordered[:excess]
            drop_ids = {a.id for a in drop}
            for a in drop:
                if not a.client_terminal():
                    out.stops.append(Stop(a, ALLOC_NOT_NEEDED))
                    du.stop += 1
            untainted = [a for a in untainted if a.id not in drop_ids]

    # Updates of the ones that stay.
    for a in untainted:
        if _same_version(a, job) or a.client_status == "complete":
            du.ignore += 1
        elif a.job is None or tasks_updated(a.job.group(tg.name) or tg, tg):  # None: see _same_version
            gp.destructive.append(Place(tg, a.name, previous=a))
            du.destructive_update += 1
        else:
            gp.inplace.append(a)
            du.in_place_update += 1

    for a in migrate:
        out.stops.append(Stop(a, ALLOC_MIGRATING))
        gp.places.append(Place(tg, a.name, previous=a))
        du.migrate += 1

    used_names = {a.name for a in untainted} | {a.name for a in migrate}
    room = count - len(untainted) - len(migrate)

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

