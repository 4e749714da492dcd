"""Jobs and task groups (Nomad's api/jobs.go Job, api/tasks.go TaskGroup)."""

from __future__ import annotations

from typing import Any

from .base import Struct, field
from .duration import Duration
from .network import NetworkResource
from .placement import Affinity, Constraint, Spread
from .policies import (DisconnectStrategy, EphemeralDisk, MigrateStrategy, ReschedulePolicy, RestartPolicy,
                       ScalingPolicy, UpdateStrategy)
from .service import Service
from .task import Task

JOB_TYPES = ("service", "batch", "system", "sysbatch")


VOLUME_TYPES = ("host", "csi")


class CSIMountOptions(Struct):
    fs_type: str = field("", json="FSType")
    mount_flags: list[str] | None = None


class VolumeRequest(Struct):
    """A group's `volume "name" { type, source, read_only }` (Nomad's VolumeRequest)."""
    name: str = field("", hcl="label")
    type: str = ""
    source: str = ""
    read_only: bool = False
    access_mode: str = ""
    attachment_mode: str = ""
    per_alloc: bool = False
    sticky: bool = False
    mount_options: CSIMountOptions | None = None


class TaskGroup(Struct):
    name: str = field("", hcl="label")
    count: int | None = None
    constraints: list[Constraint] | None = field(None, hcl="constraint")
    affinities: list[Affinity] | None = field(None, hcl="affinity")
    spreads: list[Spread] | None = field(None, hcl="spread")
    tasks: list[Task] | None = field(None, hcl="task")
    networks: list[NetworkResource] | None = field(None, hcl="network")
    services: list[Service] | None = field(None, hcl="service")
    restart_policy: RestartPolicy | None = field(None, hcl="restart")
    reschedule_policy: ReschedulePolicy | None = field(None, hcl="reschedule")
    update: UpdateStrategy | None = None
    migrate: MigrateStrategy | None = None
    scaling: ScalingPolicy | None = None
    ephemeral_disk: EphemeralDisk | None = None
    volumes: dict[str, VolumeRequest] | None = field(None, hcl="volume")
    meta: dict[str, str] | None = None
    shutdown_delay: Duration | None = None
    stop_after_client_disconnect: Duration | None = None
    max_client_disconnect: Duration | None = None
    disconnect: DisconnectStrategy | None = None

    def task(self, name: str) -> Task | None:
        return next((t for t in self.tasks or [] if t.name == name), None)

    @property
    def network(self) -> NetworkResource | None:
        return self.networks[0] if self.networks else None

    def stop_on_client_after(self) -> int:
        """Nanoseconds after which a client that cannot reach the servers stops this group's
        allocations (`disconnect { stop_on_client_after }`, or the older
        `stop_after_client_disconnect`); 0: never."""
        d = self.disconnect.stop_on_client_after if self.disconnect is not None else None
        return int(d or self.stop_after_client_disconnect or 0)


class JobUILink(Struct):
    label: str = ""
    url: str = field("", json="Url")


class JobUI(Struct):
    """Nomad's `ui` block: how its web UI presents the job (Markdown description, links)."""
    description: str = ""
    links: list[JobUILink] | None = field(None, hcl="link")


class PeriodicConfig(Struct):
    """Nomad's `periodic` block: launch a child job on a cron schedule."""
    enabled: bool = True
    spec: str = field("", hcl="cron")
    specs: list[str] | None = field(None, hcl="crons")
    spec_type: str = field("cron", hcl="-")
    prohibit_overlap: bool = False
    time_zone: str = field("UTC", json="TimeZone")

    def all_specs(self) -> list[str]:
        return [s for s in [self.spec, *(self.specs or [])] if s]


class ParameterizedJobConfig(Struct):
    """Nomad's `parameterized` block: a job that runs once per `job dispatch`."""
    payload: str = "optional"   # optional | required | forbidden
    meta_required: list[str] | None = None
    meta_optional: list[str] | None = None


class Job(Struct):
    region: str | None = None
    namespace: str | None = None
    id: str = field("", json="ID", hcl="label")
    name: str | None = None
    type: str | None = None
    priority: int | None = None
    all_at_once: bool = False
    datacenters: list[str] | None = None
    node_pool: str | None = None
    constraints: list[Constraint] | None = field(None, hcl="constraint")
    affinities: list[Affinity] | None = field(None, hcl="affinity")
    spreads: list[Spread] | None = field(None, hcl="spread")
    task_groups: list[TaskGroup] | None = field(None, hcl="group")
    update: UpdateStrategy | None = None
    reschedule: ReschedulePolicy | None = None
    migrate: MigrateStrategy | None = None
    meta: dict[str, str] | None = None
    ui: JobUI | None = field(None, json="UI")
    periodic: PeriodicConfig | None = None
    parameterized_job: ParameterizedJobConfig | None = field(None, json="ParameterizedJob", hcl="parameterized")
    # a dispatched child's payload, base64 in JSON as Go's []byte
    payload: str | None = field(None, hcl="-")
    # Set by the server, never by a job file.
    stop: bool = field(False, hcl="-")
    parent_id: str = field("", json="ParentID", hcl="-")
    dispatched: bool = field(False, hcl="-")
    dispatch_idempotency_token: str = field("", hcl="-")
    status: str = field("", hcl="-")
    status_description: str = field("", hcl="-")
    stable: bool = field(False, hcl="-")
    version: int = field(0, hcl="-")
    submit_time: int = field(0, hcl="-")
    create_index: int = field(0, hcl="-")
    modify_index: int = field(0, hcl="-")
    job_modify_index: int = field(0, hcl="-")

    def group(self, name: str) -> TaskGroup | None:
        return next((g for g in self.task_groups or [] if g.name == name), None)

    def is_periodic(self) -> bool:
        return self.periodic is not None

    def is_parameterized(self) -> bool:
        return self.parameterized_job is not None and not self.dispatched

    def is_parent(self) -> bool:
        """A periodic or parameterized job: it launches children and runs nothing itself."""
        return self.is_periodic() or self.is_parameterized()

    def to_document(self) -> dict[str, Any]:
        """``{"Job": {...}}``, the shape of Nomad's register request and `-output`."""
        return {"Job": self.to_json()}
