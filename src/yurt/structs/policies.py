"""Restart, reschedule, update and migrate policies, disks and logs."""

from __future__ import annotations

from .base import Struct, field
from .duration import Duration


class RestartPolicy(Struct):
    attempts: int | None = None
    interval: Duration | None = None
    delay: Duration | None = None
    mode: str | None = None
    render_templates: bool | None = None


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


class MigrateStrategy(Struct):
    max_parallel: int | None = None
    health_check: str | None = None
    min_healthy_time: Duration | None = None
    healthy_deadline: Duration | None = None


class EphemeralDisk(Struct):
    sticky: bool | None = None
    migrate: bool | None = None
    size_mb: int | None = field(None, json="SizeMB", hcl="size")


class LogConfig(Struct):
    max_files: int | None = None
    max_file_size_mb: int | None = field(None, json="MaxFileSizeMB", hcl="max_file_size")
    disabled: bool | None = None
