"""Restart, reschedule, update and migrate policies, disks and logs."""

from __future__ import annotations

from typing import Any

from .base import Struct, field
from .duration import HOUR, MINUTE, SECOND, Duration


class RestartPolicy(Struct):
    attempts: int | None = None
    interval: Duration | None = None
    delay: Duration | None = None
    mode: str | None = None
    render_templates: bool | None = None

    @classmethod
    def for_job_type(cls, job_type: str) -> RestartPolicy:
        """Nomad's default restart policy of a job type (service/system vs batch/sysbatch)."""
        if job_type in ("service", "system"):
            return cls(attempts=2, interval=30 * MINUTE, delay=15 * SECOND, mode="fail", render_templates=False)
        return cls(attempts=3, interval=24 * HOUR, delay=15 * SECOND, mode="fail", render_templates=False)


class ReschedulePolicy(Struct):
    attempts: int | None = None
    interval: Duration | None = None
    delay: Duration | None = None
    delay_function: str | None = None
    max_delay: Duration | None = None
    unlimited: bool | None = None


class UpdateStrategy(Struct):
    stagger: Duration | None = None
    max_parallel: int | None = None
    health_check: str | None = None
    min_healthy_time: Duration | None = None
    healthy_deadline: Duration | None = None
    progress_deadline: Duration | None = None
    canary: int | None = None
    auto_revert: bool | None = None
    auto_promote: bool | None = None


class ScalingPolicy(Struct):
    """A group's `scaling` block: the bounds `job scale` (and an external autoscaler) keeps its
    count within; `policy` is the autoscaler's, kept as given."""

    type: str | None = None
    enabled: bool | None = None
    min: int | None = None
    max: int | None = None
    policy: dict[str, Any] | None = None


class MigrateStrategy(Struct):
    max_parallel: int | None = None
    health_check: str | None = None
    min_healthy_time: Duration | None = None
    healthy_deadline: Duration | None = None


class DisconnectStrategy(Struct):
    """A group's `disconnect` block (Nomad 1.8+): what happens when its client loses the servers.
    Yurt acts on stop_on_client_after (the client stops the allocation, the servers replace it
    only once it has surely stopped); lost_after and reconcile are warned about, replace = false
    is refused (jobspec/ignored.py)."""

    lost_after: Duration | None = None
    replace: bool | None = None
    reconcile: str | None = None
    stop_on_client_after: Duration | None = None


class EphemeralDisk(Struct):
    sticky: bool | None = None
    migrate: bool | None = None
    size_mb: int | None = field(None, json="SizeMB", hcl="size")


class LogConfig(Struct):
    max_files: int | None = None
    max_file_size_mb: int | None = field(None, json="MaxFileSizeMB", hcl="max_file_size")
    disabled: bool | None = None
