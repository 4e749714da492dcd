"""Deployments (Nomad's structs.Deployment): one per job version that a rolling update, a
canary or a first placement rolls out, with per-group progress."""

from __future__ import annotations

from .base import Struct, field
from .duration import Duration
from .policies import UpdateStrategy

DEPLOYMENT_RUNNING = "running"
DEPLOYMENT_PAUSED = "paused"
DEPLOYMENT_SUCCESSFUL = "successful"
DEPLOYMENT_FAILED = "failed"
DEPLOYMENT_CANCELLED = "cancelled"
ACTIVE_STATUSES = (DEPLOYMENT_RUNNING, DEPLOYMENT_PAUSED)

DESC_RUNNING = "Deployment is running"
DESC_NEEDS_PROMOTION = "Deployment is running but requires manual promotion"
DESC_AUTO_PROMOTION = "Deployment is running pending automatic promotion"
DESC_PAUSED = "Deployment is paused"
DESC_SUCCESSFUL = "Deployment completed successfully"
DESC_UNHEALTHY = "Failed due to unhealthy allocations"
DESC_PROGRESS_DEADLINE = "Failed due to progress deadline"
DESC_MARKED_FAILED = "Deployment marked as failed"
DESC_STOPPED = "Cancelled because job is stopped"
DESC_NEWER_JOB = "Cancelled due to newer version of job"

SECOND = 1_000_000_000
DEFAULT_UPDATE = UpdateStrategy(stagger=30 * SECOND, max_parallel=1, health_check="checks",
                                min_healthy_time=10 * SECOND, healthy_deadline=300 * SECOND,
                                progress_deadline=600 * SECOND, canary=0, auto_revert=False,
                                auto_promote=False)


def merged_update(job_update: UpdateStrategy | None, group_update: UpdateStrategy | None) -> UpdateStrategy:
    """The group's update strategy: its own fields, else the job's, else Nomad's defaults."""
    out = DEFAULT_UPDATE.model_copy()
    for src in (job_update, group_update):
        if src is None:
            continue
        for name in UpdateStrategy.model_fields:
            value = getattr(src, name)
            if value is not None:
                setattr(out, name, value)
    return out


class DeploymentState(Struct):
    """One task group's progress in a deployment."""

    auto_revert: bool = False
    auto_promote: bool = False
    progress_deadline: Duration = 0
    require_progress_by: str = "0001-01-01T00:00:00Z"
    promoted: bool = False
    placed_canaries: list[str] = field(factory=list)
    desired_canaries: int = 0
    desired_total: int = 0
    placed_allocs: int = 0
    healthy_allocs: int = 0
    unhealthy_allocs: int = 0


class Deployment(Struct):
    id: str = field("", json="ID")
    namespace: str = "default"
    job_id: str = field("", json="JobID")
    job_version: int = 0
    job_modify_index: int = 0
    job_spec_modify_index: int = 0
    job_create_index: int = 0
    is_multiregion: bool = False
    status: str = DEPLOYMENT_RUNNING
    status_description: str = DESC_RUNNING
    eval_priority: int = 50
    task_groups: dict[str, DeploymentState] = field(factory=dict)
    create_index: int = 0
    modify_index: int = 0
    create_time: int = 0
    modify_time: int = 0

    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def has_canaries_to_promote(self) -> bool:
        return any(s.desired_canaries > 0 and not s.promoted for s in self.task_groups.values())
