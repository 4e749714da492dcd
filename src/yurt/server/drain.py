"""Node lifecycle on the server: drain, scheduling eligibility, purge, and the drainer that moves
allocations off draining nodes (Nomad's Node.UpdateDrain / UpdateEligibility / Deregister and
nomad/drainer).

A drain makes the node ineligible and sets its DrainStrategy; the drainer thread then, for each
service group with allocations there, marks allocations for migration (DesiredTransition.Migrate,
plus a `node-drain` eval for the job) at most the group's `migrate.max_parallel` at a time: it
marks more only once the replacements are healthy (Nomad's rule: `healthy - (count -
max_parallel)` may be marked, where healthy counts the group's allocations that are not stopped,
not marked, and have their health decided). The reconciler stops a marked allocation and places
its replacement. Batch allocations are left to finish. At the ForceDeadline everything left is
marked at once. When nothing but (ignored) system allocations is left running on the node, the
drain is complete: DrainStrategy goes, the node stays ineligible, LastDrain says complete.

Health is decided here, by the group's `migrate` block, from what clients report: the tasks
running for `min_healthy_time` since the latest start (and with `health_check = "checks"` every
check of the allocation passing for as long, as the server saw them), or not by
`healthy_deadline` after the allocation was created. It is recorded as the allocation's
DeploymentStatus.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from yurt.errors import Conflict, InvalidInput, NotFound
from yurt.structs import (AllocDeploymentStatus, Allocation, DesiredTransition, DrainMetadata,
                          DrainSpec, DrainStrategy, Evaluation, Job, MigrateStrategy, Node,
                          NodeEvent, TaskGroup)
from yurt.structs.duration import MINUTE, SECOND
from yurt.structs.evaluation import EVAL_PENDING, TRIGGER_NODE_DRAIN, TRIGGER_NODE_UPDATE
from yurt.structs.node import (DRAIN_CANCELED, DRAIN_COMPLETE, DRAIN_DRAINING, ELIGIBLE, INELIGIBLE,
                               MAX_NODE_EVENTS, ZERO_TIME)
from yurt.structs.times import rfc3339
from yurt.state import Snapshot

from .health import HealthJudge

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("yurt.server.drain")

TICK = 0.25   # seconds between two looks at the draining nodes (sooner when woken)
SUBSYSTEM = "Drain"
SUBSYSTEM_CLUSTER = "Cluster"

EVENT_DRAIN_SET = "Node drain strategy set"
EVENT_DRAIN_UPDATED = "Node drain strategy updated"
EVENT_DRAIN_DISABLED = "Node drain disabled"
EVENT_DRAIN_COMPLETE = "Node drain complete"
EVENT_ELIGIBLE = "Node marked as eligible for scheduling"
EVENT_INELIGIBLE = "Node marked as ineligible for scheduling"

DEFAULT_MIGRATE = MigrateStrategy(max_parallel=1, health_check="checks", min_healthy_time=10 * SECOND,
                                  healthy_deadline=5 * MINUTE)


def _event(message: str, index: int, now_ns: int, subsystem: str = SUBSYSTEM,
           details: dict[str, str] | None = None) -> NodeEvent:
    return NodeEvent(message=message, subsystem=subsystem, details=details, timestamp=rfc3339(now_ns),
                     create_index=index)


def _with_events(node: Node, *events: NodeEvent) -> list[NodeEvent]:
    return (list(node.events) + list(events))[-MAX_NODE_EVENTS:]


def _job_type(alloc: Allocation) -> str:
    return (alloc.job.type if alloc.job is not None else "") or "service"


def migrate_strategy(tg: TaskGroup) -> MigrateStrategy:
    """The group's `migrate` block with Nomad's defaults for what it leaves out."""
    m = tg.migrate or DEFAULT_MIGRATE
    d = DEFAULT_MIGRATE
    return MigrateStrategy(
        max_parallel=m.max_parallel if m.max_parallel is not None else d.max_parallel,
        health_check=m.health_check or d.health_check,
        min_healthy_time=m.min_healthy_time if m.min_healthy_time is not None else d.min_healthy_time,
        healthy_deadline=m.healthy_deadline if m.healthy_deadline is not None else d.healthy_deadline)


class Drainer:
    """The node-lifecycle writes (what the API calls) and the thread that carries drains out."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.store = server.store
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._judge = HealthJudge(server.catalog.checks_of)
        self._idle_at = -1          # the nodes table's index when no node was draining

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="yurt-drainer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick(time.time_ns())
            except Exception:
                log.exception("draining nodes failed; trying again")

    # -- the API's writes -------------------------------------------------------------------
    def _node(self, node_id: str) -> Node:
        node = self.store.node(node_id)
        if node is None:
            raise NotFound(f'node "{node_id}" not found: `yurt node status` lists the nodes')
        return node

    def _node_evals(self, node_id: str, trigger: str) -> list[Evaluation]:
        """One eval per job with allocations still on the node, and per system job (Nomad's
        createNodeEvals)."""
        return [self.server._new_eval(self.store.job(ns, job_id), ns, job_id, trigger, node_id=node_id)
                for ns, job_id in self.server.node_jobs(node_id)]

    def update_drain(self, node_id: str, spec: DrainSpec | None, *, mark_eligible: bool = False,
                     meta: dict[str, str] | None = None) -> dict[str, Any]:
        """Set, update (`spec`) or cancel (None) the node's drain (Nomad's Node.UpdateDrain).
        Setting one makes the node ineligible; canceling with `mark_eligible` makes it eligible."""
        if spec is not None and mark_eligible:
            raise InvalidInput("MarkEligible only applies when a drain is canceled (DrainSpec null): a "
                               "draining node is never eligible")
        node = self._node(node_id)
        now = time.time_ns()
        becomes_eligible = spec is None and mark_eligible and node.scheduling_eligibility != ELIGIBLE
        evals = self._node_evals(node_id, TRIGGER_NODE_UPDATE) if becomes_eligible else []

        def change(current: Node, index: int) -> dict[str, Any] | None:
            if spec is not None:
                return self._set_drain(current, spec, meta, index, now)
            return self._cancel_drain(current, mark_eligible, index, now)

        index = self.store.modify_node(node_id, change, evals)
        for ev in evals:
            self.server.broker.enqueue(ev)
        if becomes_eligible:
            self.server.broker.unblock()
        self._wake.set()
        return {"EvalIDs": [e.id for e in evals], "EvalCreateIndex": index if evals else 0,
                "NodeModifyIndex": index, "Index": index}

    @staticmethod
    def _set_drain(node: Node, spec: DrainSpec, meta: dict[str, str] | None, index: int,
                   now: int) -> dict[str, Any]:
        old = node.drain_strategy
        if spec.deadline < 0:
            force = rfc3339(now)                       # force: everything goes now
        elif spec.deadline == 0:
            force = ZERO_TIME                          # no deadline
        else:
            force = rfc3339(now + spec.deadline)
        started = old.started_at if old is not None else rfc3339(now)
        last = node.last_drain if (old is not None and node.last_drain is not None) else None
        return {
            "drain_strategy": DrainStrategy(drain_spec=spec, force_deadline=force, started_at=started),
            "drain": True, "scheduling_eligibility": INELIGIBLE,
            "last_drain": DrainMetadata(started_at=last.started_at if last else started,
                                        updated_at=rfc3339(now), status=DRAIN_DRAINING,
                                        meta=dict(meta) if meta else (last.meta if last else None)),
            "events": _with_events(node, _event(EVENT_DRAIN_UPDATED if old is not None else EVENT_DRAIN_SET,
                                                index, now)),
        }

    @staticmethod
    def _cancel_drain(node: Node, mark_eligible: bool, index: int, now: int) -> dict[str, Any] | None:
        fields: dict[str, Any] = {}
        events: list[NodeEvent] = []
        if node.drain_strategy is not None:
            fields.update(drain_strategy=None, drain=False)
            if node.last_drain is not None:
                fields["last_drain"] = node.last_drain.model_copy(update={
                    "status": DRAIN_CANCELED, "updated_at": rfc3339(now)})
            events.append(_event(EVENT_DRAIN_DISABLED, index, now))
        if mark_eligible and node.scheduling_eligibility != ELIGIBLE:
            fields["scheduling_eligibility"] = ELIGIBLE
            events.append(_event(EVENT_ELIGIBLE, index, now, SUBSYSTEM_CLUSTER))
        if not fields:
            return None
        fields["events"] = _with_events(node, *events)
        return fields

    def update_eligibility(self, node_id: str, eligibility: str) -> dict[str, Any]:
        """Nomad's Node.UpdateEligibility: "eligible" or "ineligible"; never eligible while draining."""
        if eligibility not in (ELIGIBLE, INELIGIBLE):
            raise InvalidInput(f'invalid scheduling eligibility "{eligibility}": use "{ELIGIBLE}" or '
                               f'"{INELIGIBLE}"')
        node = self._node(node_id)
        now = time.time_ns()
        becomes_eligible = eligibility == ELIGIBLE and node.scheduling_eligibility != ELIGIBLE
        evals = self._node_evals(node_id, TRIGGER_NODE_UPDATE) if becomes_eligible else []

        def change(current: Node, index: int) -> dict[str, Any] | None:
            if eligibility == ELIGIBLE and current.drain_strategy is not None:
                raise Conflict("can not set node's scheduling eligibility to eligible while it is draining: "
                               "cancel the drain first (yurt node drain -disable)")
            if current.scheduling_eligibility == eligibility:
                return None
            message = EVENT_ELIGIBLE if eligibility == ELIGIBLE else EVENT_INELIGIBLE
            return {"scheduling_eligibility": eligibility,
                    "events": _with_events(current, _event(message, index, now, SUBSYSTEM_CLUSTER))}

        index = self.store.modify_node(node_id, change, evals)
        for ev in evals:
            self.server.broker.enqueue(ev)
        if becomes_eligible:
            self.server.broker.unblock()
        return {"EvalIDs": [e.id for e in evals], "EvalCreateIndex": index if evals else 0,
                "NodeModifyIndex": index, "Index": index}

    def purge(self, node_id: str) -> dict[str, Any]:
        """Forget the node (Nomad's Node.Deregister): its allocations are lost and replaced. If its
        agent is still alive it registers again and stops what was replaced meanwhile."""
        self._node(node_id)
        evals = self._node_evals(node_id, TRIGGER_NODE_UPDATE)
        index = self.store.delete_node(node_id, evals)
        self.server.heartbeats.forget(node_id)
        self.server.catalog.remove_node(node_id)
        for ev in evals:
            self.server.broker.enqueue(ev)
        return {"EvalIDs": [e.id for e in evals], "EvalCreateIndex": index if evals else 0,
                "NodeModifyIndex": index, "Index": index}

    # -- the drainer --------------------------------------------------------------------------
    def tick(self, now: int) -> None:
        """Look at every draining node once: record health, mark what may migrate, force what is
        left at the deadline, complete what is done."""
        nodes_index = self.store.table_index("nodes")
        if nodes_index == self._idle_at:
            return      # nothing draining, and no node changed since that was seen
        if not any(n.drain_strategy is not None for n in self.store.nodes()):
            self._judge.forget_all()
            self._idle_at = nodes_index
            return
        self._idle_at = -1
        snap = self.store.snapshot()
        plan = _TickPlan()
        for node in snap.nodes():
            if node.drain_strategy is not None:
                self._drain_node(snap, node, now, plan)
        if plan.health:
            self.store.update_alloc_health(plan.health)
        if plan.marks:
            evals = [self._drain_eval(snap, ns, job_id, node_id)
                     for (ns, job_id), node_id in sorted(plan.jobs.items())]
            self.store.update_alloc_transitions({a: DesiredTransition(migrate=True) for a in plan.marks}, evals)
            for ev in evals:
                self.server.broker.enqueue(ev)
        for node_id, (started_at, forced) in plan.done.items():
            self._complete(node_id, started_at, forced, now)
        live = {a.id for n in snap.nodes() if n.drain_strategy is not None for a in snap.allocs_by_node(n.id)}
        self._judge.keep_only(live | plan.watched)

    def _drain_eval(self, snap: Snapshot, namespace: str, job_id: str, node_id: str) -> Evaluation:
        job = snap.job(namespace, job_id)
        now = time.time_ns()
        return Evaluation(id=str(uuid.uuid4()), namespace=namespace, job_id=job_id,
                          priority=(job.priority if job else None) or 50,
                          type=(job.type if job else None) or "service", triggered_by=TRIGGER_NODE_DRAIN,
                          job_modify_index=job.job_modify_index if job else 0, node_id=node_id,
                          status=EVAL_PENDING, create_time=now, modify_time=now)

    def _drain_node(self, snap: Snapshot, node: Node, now: int, plan: _TickPlan) -> None:
        strategy = node.drain_strategy
        assert strategy is not None
        ignore_system = strategy.drain_spec.ignore_system_jobs
        on_node = [a for a in snap.allocs_by_node(node.id, terminal=None) if not a.client_terminal()]
        deadline = strategy.force_deadline_ns()
        if deadline is not None and now >= deadline:
            # the deadline: whatever is left goes at once, and the drain is over
            for a in on_node:
                if a.server_terminal() or a.desired_transition.migrate:
                    continue
                if ignore_system and _job_type(a) == "system":
                    continue
                plan.mark(a)
            plan.done[node.id] = (strategy.started_at, True)
            return
        system = [a for a in on_node if _job_type(a) == "system"]
        others = [a for a in on_node if _job_type(a) != "system"]
        groups = sorted({(a.namespace, a.job_id, a.task_group) for a in others if _job_type(a) == "service"})
        for ns, job_id, group in groups:
            if (ns, job_id, group) in plan.groups:
                continue   # seen from another draining node this tick
            plan.groups.add((ns, job_id, group))
            job = snap.job(ns, job_id)
            tg = job.group(group) if job is not None and not job.stop else None
            if job is None or tg is None:
                continue   # a stopped or changed job: the scheduler stops these allocations itself
            self._drain_group(snap, job, tg, now, plan)
        if others:
            return
        # system allocations go last (Nomad), unless the drain ignores them
        if system and not ignore_system:
            for a in system:
                if not a.server_terminal() and not a.desired_transition.migrate:
                    plan.mark(a)
            return
        plan.done[node.id] = (strategy.started_at, False)

    def _drain_group(self, snap: Snapshot, job: Job, tg: TaskGroup, now: int, plan: _TickPlan) -> None:
        """Nomad's handleTaskGroup: how many of this group's allocations on draining nodes may
        be marked now."""
        strategy = migrate_strategy(tg)
        draining: dict[str, bool] = {}
        healthy = 0
        drainable: list[Allocation] = []
        for a in snap.allocs_by_job(job.namespace or "default", job.id):
            if a.task_group != tg.name or a.id in plan.marked:
                continue
            if a.node_id not in draining:
                where = snap.node(a.node_id)
                draining[a.node_id] = where is not None and where.drain_strategy is not None
            if not a.terminal():
                plan.watched.add(a.id)
                if not a.desired_transition.migrate and self._has_health(snap, a, tg, strategy, now, plan):
                    healthy += 1
            if not draining[a.node_id] or a.client_terminal():
                continue
            if not a.server_terminal() and not a.desired_transition.migrate:
                drainable.append(a)
        count = tg.count or 0
        n = min(len(drainable), healthy - (count - (strategy.max_parallel or 0)))
        for a in sorted(drainable, key=lambda a: (a.index, a.id))[:max(n, 0)]:
            plan.mark(a)

    def _has_health(self, snap: Snapshot, a: Allocation, tg: TaskGroup, strategy: MigrateStrategy,
                    now: int, plan: _TickPlan) -> bool:
        if a.deployment_status is not None and a.deployment_status.has_health():
            return True
        healthy = self._health(snap, a, tg, strategy, now)
        if healthy is None:
            return False
        plan.health[a.id] = AllocDeploymentStatus(healthy=healthy, timestamp=rfc3339(now))
        return True

    def _health(self, snap: Snapshot, a: Allocation, tg: TaskGroup, strategy: MigrateStrategy,
                now: int) -> bool | None:
        """As Nomad's client decides it for a migration (`health.HealthJudge`)."""
        return self._judge.health(snap, a, tg, health_check=strategy.health_check or "checks",
                                  min_healthy_time=strategy.min_healthy_time or 0,
                                  healthy_deadline=strategy.healthy_deadline or 0, now=now)

    def _complete(self, node_id: str, started_at: str, forced: bool, now: int) -> None:
        def change(node: Node, index: int) -> dict[str, Any] | None:
            strategy = node.drain_strategy
            if strategy is None or strategy.started_at != started_at:
                return None     # canceled or replaced meanwhile
            details = {"deadline_reached": "true"} if forced else None
            last = node.last_drain or DrainMetadata(started_at=started_at)
            return {"drain_strategy": None, "drain": False,
                    "last_drain": last.model_copy(update={"status": DRAIN_COMPLETE, "updated_at": rfc3339(now)}),
                    "events": _with_events(node, _event(EVENT_DRAIN_COMPLETE, index, now, details=details))}
        try:
            self.store.modify_node(node_id, change)
        except NotFound:
            return      # purged meanwhile
        log.info("node %s: drain complete%s", node_id[:8], " (deadline reached)" if forced else "")


class _TickPlan:
    """What one look at the draining nodes decided."""

    def __init__(self) -> None:
        self.marks: list[str] = []
        self.marked: set[str] = set()
        self.jobs: dict[tuple[str, str], str] = {}      # (namespace, job) -> a node it drains
        self.health: dict[str, AllocDeploymentStatus] = {}
        self.done: dict[str, tuple[str, bool]] = {}     # node -> (drain started at, forced)
        self.watched: set[str] = set()
        self.groups: set[tuple[str, str, str]] = set()

    def mark(self, alloc: Allocation) -> None:
        if alloc.id in self.marked:
            return
        self.marked.add(alloc.id)
        self.marks.append(alloc.id)
        self.jobs.setdefault((alloc.namespace, alloc.job_id), alloc.node_id)
