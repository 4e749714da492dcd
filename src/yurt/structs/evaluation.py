"""Evaluations, placement metrics, plans and job summaries."""

from __future__ import annotations


from .alloc import AllocMetric, Allocation
from .deployment import Deployment
from .base import Struct, field
from .job import Job

EVAL_PENDING = "pending"
EVAL_BLOCKED = "blocked"
EVAL_COMPLETE = "complete"
EVAL_FAILED = "failed"
EVAL_CANCELED = "canceled"

TRIGGER_JOB_REGISTER = "job-register"
TRIGGER_JOB_DEREGISTER = "job-deregister"
TRIGGER_NODE_UPDATE = "node-update"
TRIGGER_NODE_DRAIN = "node-drain"
TRIGGER_ALLOC_STOP = "alloc-stop"
TRIGGER_ALLOC_FAILURE = "alloc-failure"
TRIGGER_RETRY_FAILED_ALLOC = "alloc-failure"
TRIGGER_QUEUED_ALLOCS = "queued-allocs"
TRIGGER_MAX_PLANS = "max-plan-attempts"
TRIGGER_FAILED_FOLLOW_UP = "failed-follow-up"


class Evaluation(Struct):
    id: str = field("", json="ID")
    namespace: str = "default"
    priority: int = 50
    type: str = "service"
    triggered_by: str = ""
    job_id: str = field("", json="JobID")
    job_modify_index: int = 0
    node_id: str = field("", json="NodeID")
    node_modify_index: int = 0
    deployment_id: str = field("", json="DeploymentID")
    status: str = EVAL_PENDING
    status_description: str = ""
    wait: int = 0
    wait_until: int = 0  # unix nanoseconds; 0 = now
    next_eval: str = ""
    previous_eval: str = ""
    blocked_eval: str = ""
    failed_tg_allocs: dict[str, AllocMetric] | None = field(None, json="FailedTGAllocs")
    class_eligibility: dict[str, bool] | None = None
    escaped_computed_class: bool = False
    annotate_plan: bool = False
    queued_allocations: dict[str, int] | None = None
    snapshot_index: int = 0
    create_index: int = 0
    modify_index: int = 0
    create_time: int = 0
    modify_time: int = 0

    def terminal(self) -> bool:
        return self.status in (EVAL_COMPLETE, EVAL_FAILED, EVAL_CANCELED)


class DesiredUpdates(Struct):
    ignore: int = 0
    place: int = 0
    migrate: int = 0
    stop: int = 0
    in_place_update: int = 0
    destructive_update: int = 0
    canary: int = 0
    preemptions: int = 0
    reschedule_now: int = 0
    reschedule_later: int = 0


class PlanAnnotations(Struct):
    desired_tg_updates: dict[str, DesiredUpdates] = field(factory=dict, json="DesiredTGUpdates")


class Plan(Struct):
    """What a scheduler wants to change: allocations to stop and to place, per node."""

    eval_id: str = field("", json="EvalID")
    priority: int = 50
    job: Job | None = None
    all_at_once: bool = False
    node_update: dict[str, list[Allocation]] = field(factory=dict)
    node_allocation: dict[str, list[Allocation]] = field(factory=dict)
    annotations: PlanAnnotations | None = None
    snapshot_index: int = 0
    deployment: Deployment | None = None                                  # new or changed
    deployment_updates: list[Deployment] = field(factory=list)            # others (cancelled)

    def is_noop(self) -> bool:
        return (not any(self.node_update.values()) and not any(self.node_allocation.values())
                and self.deployment is None and not self.deployment_updates)


class PlanResult(Struct):
    node_update: dict[str, list[Allocation]] = field(factory=dict)
    node_allocation: dict[str, list[Allocation]] = field(factory=dict)
    refresh_index: int = 0
    alloc_index: int = 0
    rejected_nodes: list[str] = field(factory=list)


class TaskGroupSummary(Struct):
    queued: int = 0
    complete: int = 0
    failed: int = 0
    running: int = 0
    starting: int = 0
    lost: int = 0
    unknown: int = 0


class JobSummary(Struct):
    job_id: str = field("", json="JobID")
    namespace: str = "default"
    summary: dict[str, TaskGroupSummary] = field(factory=dict)
    children: dict[str, int] | None = None
    create_index: int = 0
    modify_index: int = 0
