"""What the store computes rather than stores: job status, spec changes, job summaries."""

from __future__ import annotations

from collections.abc import Iterable

from yurt.structs import Evaluation, Job, JobSummary, TaskGroupSummary

from .memory import AllocCounts

JOB_PENDING = "pending"
JOB_RUNNING = "running"
JOB_DEAD = "dead"

# Fields the server sets; a register that differs only in these is not a new version
# (Nomad's Job.SpecChanged). Stop is part of the spec: stopping a job makes a new version.
SERVER_FIELDS = frozenset({"version", "status", "status_description", "stable", "submit_time",
                           "create_index", "modify_index", "job_modify_index"})


def spec_of(job: Job) -> dict:
    return job.model_dump(exclude=set(SERVER_FIELDS))


def spec_changed(old: Job, new: Job) -> bool:
    return spec_of(old) != spec_of(new)


def job_status(job: Job, counts: AllocCounts | None, evals: Iterable[Evaluation],
               evals_deleted: bool = False) -> str:
    """Nomad's getJobStatus, plus: a stopped job is dead (as `nomad job status` shows it).

    system jobs run until stopped; otherwise running while any allocation is non-terminal,
    pending while an evaluation is, dead once everything is terminal (or was collected).
    """
    if job.stop:
        return JOB_DEAD
    if job.type == "system" or job.is_parent():
        return JOB_RUNNING   # a periodic or parameterized parent runs (launches) until stopped
    if counts is not None and counts.live > 0:
        return JOB_RUNNING
    has_eval = False
    for ev in evals:
        has_eval = True
        if not ev.terminal():
            return JOB_PENDING
    if evals_deleted or has_eval or (counts is not None and counts.total > 0):
        return JOB_DEAD
    return JOB_PENDING


_STATUS_FIELD = {"pending": "starting", "running": "running", "complete": "complete",
                 "failed": "failed", "lost": "lost", "unknown": "unknown"}


def job_summary(job: Job, counts: AllocCounts | None, evals: Iterable[Evaluation],
                modify_index: int) -> JobSummary:
    """Counts per task group by client status; Queued from the newest eval that reported it."""
    groups: dict[str, dict[str, int]] = {g.name: {} for g in job.task_groups or []}
    if counts is not None:
        for g, by_status in counts.groups.items():
            row = groups.setdefault(g, {})
            for status, n in by_status.items():
                name = _STATUS_FIELD.get(status)
                if name and n:
                    row[name] = row.get(name, 0) + n
    latest: Evaluation | None = None
    for ev in evals:
        if ev.queued_allocations is not None and (latest is None or ev.modify_index > latest.modify_index):
            latest = ev
    if latest is not None and not job.stop:
        for g, n in (latest.queued_allocations or {}).items():
            groups.setdefault(g, {})["queued"] = n
    return JobSummary(job_id=job.id, namespace=job.namespace or "default",
                      summary={g: TaskGroupSummary(**row) for g, row in groups.items()},
                      create_index=job.create_index, modify_index=modify_index)
