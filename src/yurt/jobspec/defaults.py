"""Fill every default Nomad fills, so a job looks the way Nomad would store it.

This is Nomad's client-side ``api.Job.Canonicalize()`` followed by the server's canonicalize
mutator (``structs.Job.Canonicalize`` plus the node-pool and priority defaults), in one pass.
Policies cascade: type default <- job block <- group block <- task block, later values winning
field by field (a field wins when it is set, i.e. not None). Canonicalizing twice changes
nothing more than canonicalizing once.

The ``default_*`` functions return fresh instances, so callers (the scheduler, the server) may
mutate what they get.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from yurt.structs import (Affinity, ChangeScript, CheckRestart, Constraint, ConsulConnect,
                          EphemeralDisk, Job, LogConfig, MigrateStrategy, NetworkResource,
                          ReschedulePolicy, Resources, RestartPolicy, Service, ServiceCheck,
                          SidecarTask, Spread, Struct, Task, TaskGroup, Template, UpdateStrategy)
from yurt.structs.duration import HOUR, MINUTE, SECOND

S = TypeVar("S", bound=Struct)
T = TypeVar("T")

DEFAULT_REGION = "global"
DEFAULT_NAMESPACE = "default"
DEFAULT_NODE_POOL = "default"
DEFAULT_TYPE = "service"
DEFAULT_PRIORITY = 50
DEFAULT_DATACENTERS = ("*",)
DEFAULT_KILL_TIMEOUT = 5 * SECOND
DEFAULT_HOST_NETWORK = "default"
DEFAULT_CHECK_RESTART_GRACE = 1 * SECOND
DEFAULT_WEIGHT = 50
DEFAULT_OPERAND = "="

# Nomad's api sets a default job-level update block only for service jobs (api/jobs.go
# Job.Canonicalize: `else if *j.Type == JobTypeService`). A system job gets an update
# strategy only when the user writes one; without it, system updates are not rolled.
UPDATE_DEFAULTED_TYPES = ("service",)


# --- type defaults ----------------------------------------------------------------------------

def default_update_strategy() -> UpdateStrategy:
    return UpdateStrategy(
        max_parallel=1, stagger=30 * SECOND, health_check="checks",
        min_healthy_time=10 * SECOND, healthy_deadline=5 * MINUTE,
        progress_deadline=10 * MINUTE, canary=0, auto_revert=False, auto_promote=False)


def default_migrate_strategy() -> MigrateStrategy:
    return MigrateStrategy(max_parallel=1, health_check="checks",
                           min_healthy_time=10 * SECOND, healthy_deadline=5 * MINUTE)


def default_restart_policy(job_type: str) -> RestartPolicy:
    return RestartPolicy.for_job_type(job_type)


def _zero_reschedule_policy() -> ReschedulePolicy:
    return ReschedulePolicy(attempts=0, interval=0, delay=0, delay_function="",
                            max_delay=0, unlimited=False)


def default_reschedule_policy(job_type: str) -> ReschedulePolicy | None:
    """The policy a group of this job type gets; None where rescheduling does not apply."""
    if job_type == "service":
        return ReschedulePolicy(attempts=0, interval=0, delay=30 * SECOND,
                                delay_function="exponential", max_delay=1 * HOUR,
                                unlimited=True)
    if job_type == "batch":
        return ReschedulePolicy(attempts=1, interval=24 * HOUR, delay=5 * SECOND,
                                delay_function="constant", max_delay=0, unlimited=False)
    return None


def default_ephemeral_disk() -> EphemeralDisk:
    return EphemeralDisk(sticky=False, migrate=False, size_mb=300)


def default_log_config() -> LogConfig:
    return LogConfig(max_files=10, max_file_size_mb=10, disabled=False)


# --- merging ----------------------------------------------------------------------------------

def merge(base: S | None, override: S | None) -> S | None:
    """A copy of ``base`` with every field ``override`` sets (not None) replaced by it."""
    if base is None:
        return override.model_copy(deep=True) if override is not None else None
    out = base.model_copy(deep=True)
    if override is not None:
        for name in type(override).model_fields:
            value = getattr(override, name)
            if value is not None:
                setattr(out, name, value.model_copy(deep=True) if isinstance(value, Struct)
                        else _copy(value))
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _none_if_empty(value: T) -> T | None:
    return value or None


# --- the pass ---------------------------------------------------------------------------------

def canonicalize(job: Job) -> Job:
    """Fill Nomad's defaults into ``job`` (in place) and return it."""
    job.name = job.name or job.id
    job.region = job.region or DEFAULT_REGION
    job.namespace = job.namespace or DEFAULT_NAMESPACE
    job.type = job.type or DEFAULT_TYPE
    job.priority = job.priority or DEFAULT_PRIORITY
    job.node_pool = job.node_pool or DEFAULT_NODE_POOL
    job.datacenters = job.datacenters or list(DEFAULT_DATACENTERS)
    job.meta = _none_if_empty(job.meta)

    if job.update is not None:
        job.update = merge(default_update_strategy(), job.update)
    elif job.type in UPDATE_DEFAULTED_TYPES:
        job.update = default_update_strategy()

    _placement(job.constraints, job.affinities, job.spreads)
    for group in job.task_groups or []:
        _group(job, group)
    return job


def _placement(constraints: list[Constraint] | None, affinities: list[Affinity] | None,
               spreads: list[Spread] | None = None) -> None:
    for c in constraints or []:
        c.operand = c.operand or DEFAULT_OPERAND
    for a in affinities or []:
        a.operand = a.operand or DEFAULT_OPERAND
        if a.weight is None:
            a.weight = DEFAULT_WEIGHT
    for s in spreads or []:
        if s.weight is None:
            s.weight = DEFAULT_WEIGHT


def _group(job: Job, group: TaskGroup) -> None:
    jtype = job.type or DEFAULT_TYPE  # set by canonicalize already
    if group.count is None:   # as Nomad: a scaling block's min, else 1
        group.count = group.scaling.min if group.scaling is not None and group.scaling.min is not None else 1
    group.ephemeral_disk = merge(default_ephemeral_disk(), group.ephemeral_disk)
    group.meta = _none_if_empty(group.meta)

    # update: the job's (already canonical) strategy, the group's values over it.
    if job.update is not None:
        group.update = merge(job.update, group.update)
    elif group.update is not None:
        group.update = merge(default_update_strategy(), group.update)

    # reschedule: type default <- job <- group. Kept for system/sysbatch only when written,
    # over an all-zero policy, so validation can say it is not allowed there.
    written = merge(job.reschedule, group.reschedule_policy)
    base = default_reschedule_policy(jtype)
    if base is None and written is not None:
        base = _zero_reschedule_policy()
    group.reschedule_policy = merge(base, written)

    # migrate: job <- group, over the defaults for service jobs only.
    group.migrate = merge(job.migrate, group.migrate)
    if jtype == "service":
        group.migrate = merge(default_migrate_strategy(), group.migrate)

    group.restart_policy = merge(default_restart_policy(jtype), group.restart_policy)

    _placement(group.constraints, group.affinities, group.spreads)
    for network in group.networks or []:
        _network(network)
    for service in group.services or []:
        _service(service, job, group, None)
    for task in group.tasks or []:
        _task(task, job, group)


def _network(network: NetworkResource) -> None:
    network.reserved_ports = _none_if_empty(network.reserved_ports)
    network.dynamic_ports = _none_if_empty(network.dynamic_ports)
    for port in network.ports():
        port.host_network = port.host_network or DEFAULT_HOST_NETWORK


def _task(task: Task, job: Job, group: TaskGroup) -> None:
    task.resources = _resources(task.resources)
    if not task.kill_timeout:  # the server turns 0 into the default as well
        task.kill_timeout = DEFAULT_KILL_TIMEOUT
    task.log_config = merge(default_log_config(), task.log_config)
    task.restart_policy = merge(group.restart_policy, task.restart_policy)
    task.meta = _none_if_empty(task.meta)
    task.env = _none_if_empty(task.env)
    task.config = _none_if_empty(task.config)
    _placement(task.constraints, task.affinities)
    for template in task.templates or []:
        _template(template)
    for artifact in task.artifacts or []:   # api/tasks.go TaskArtifact.Canonicalize
        artifact.getter_mode = artifact.getter_mode or "any"
        artifact.relative_dest = artifact.relative_dest or "local/"
    for service in task.services or []:
        _service(service, job, group, task)


def _resources(resources: Resources | None) -> Resources:
    """api/resources.go Canonicalize: cpu defaults to 100 only when cores is unset too."""
    r = resources if resources is not None else Resources()
    if r.cores is None:
        r.cores = 0
        if r.cpu is None:
            r.cpu = 100
    if r.cpu is None:
        r.cpu = 0
    if r.memory_mb is None:
        r.memory_mb = 300
    for name in ("memory_max_mb", "disk_mb", "secrets_mb"):
        if getattr(r, name) is None:
            setattr(r, name, 0)
    return r


def _template(t: Template) -> None:
    t.change_mode = t.change_mode or "restart"
    if t.change_signal:
        t.change_signal = t.change_signal.upper()
    elif t.change_mode == "signal":
        t.change_signal = "SIGHUP"
    if t.change_script is not None:
        cs: ChangeScript = t.change_script
        if cs.timeout is None:
            cs.timeout = 5 * SECOND
    if t.splay is None:
        t.splay = 5 * SECOND
    t.perms = t.perms or "0644"
    t.left_delim = t.left_delim or "{{"
    t.right_delim = t.right_delim or "}}"


_LEGACY_TOKEN = re.compile(r"\$\{(JOB|TASKGROUP|TASK|BASE)\}")


def service_name(name: str, job: str, group: str, task: str | None) -> str:
    """A service's name with Nomad's defaults and legacy ``${JOB}``-style tokens filled in.

    Group services have no task; for them Nomad substitutes the word "group" for ``${TASK}``.
    """
    if not name:
        name = f"{job}-{group}-{task}" if task is not None else f"{job}-{group}"
    task = task if task is not None else "group"
    values = {"JOB": job, "TASKGROUP": group, "TASK": task, "BASE": f"{job}-{group}-{task}"}
    return _LEGACY_TOKEN.sub(lambda m: values[m.group(1)], name)


def _service(s: Service, job: Job, group: TaskGroup, task: Task | None) -> None:
    s.name = service_name(s.name, job.name or job.id, group.name, task.name if task else None)
    if task is not None and not s.task_name:
        s.task_name = task.name
    s.address_mode = s.address_mode or "auto"
    s.on_update = s.on_update or "require_healthy"
    s.provider = s.provider or "consul"
    s.cluster = s.cluster or "default"
    s.tags = _none_if_empty(s.tags)
    s.canary_tags = _none_if_empty(s.canary_tags)
    s.meta = _none_if_empty(s.meta)
    s.canary_meta = _none_if_empty(s.canary_meta)
    s.tagged_addresses = _none_if_empty(s.tagged_addresses)
    s.checks = _none_if_empty(s.checks)
    for check in s.checks or []:
        _check(check, s)
    if s.connect is not None:
        _connect(s, s.connect)


def _check(c: ServiceCheck, s: Service) -> None:
    c.check_restart = _merge_check_restart(s.check_restart, c.check_restart)
    if c.check_restart is not None and c.check_restart.grace is None:
        c.check_restart.grace = DEFAULT_CHECK_RESTART_GRACE
    c.success_before_passing = max(c.success_before_passing, 0)
    c.failures_before_critical = max(c.failures_before_critical, 0)
    c.on_update = c.on_update or s.on_update
    c.name = c.name or f'service: "{s.name}" check'
    c.task_name = c.task_name or s.task_name
    c.args = _none_if_empty(c.args)
    c.header = _none_if_empty(c.header)


def _merge_check_restart(service: CheckRestart | None,
                         check: CheckRestart | None) -> CheckRestart | None:
    """api CheckRestart.Merge: the check's limit, grace, ignore_warnings win when set."""
    if service is None:
        return check
    out = service.model_copy(deep=True)
    if check is not None:
        if check.limit > 0:
            out.limit = check.limit
        if check.grace is not None:
            out.grace = check.grace
        if check.ignore_warnings:
            out.ignore_warnings = True
    return out


def _connect(s: Service, connect: ConsulConnect) -> None:
    sidecar = connect.sidecar_service
    if sidecar is not None:
        if not sidecar.tags:
            sidecar.tags = list(s.tags) if s.tags else None
        if sidecar.proxy is not None:
            sidecar.proxy.upstreams = _none_if_empty(sidecar.proxy.upstreams)
            sidecar.proxy.config = _none_if_empty(sidecar.proxy.config)
            if sidecar.proxy.expose is not None:
                sidecar.proxy.expose.paths = _none_if_empty(sidecar.proxy.expose.paths)
    if connect.sidecar_task is not None:
        _sidecar_task(connect.sidecar_task)


def _sidecar_task(st: SidecarTask) -> None:
    """A written sidecar_task keeps only what it sets: it is merged over the injected proxy task.

    Nomad's API client fills a sidecar_task with ordinary task defaults, so writing
    `sidecar_task { env { ... } }` silently raises the proxy to 100 MHz / 300 MB and drops its
    shutdown delay. Yurt does not: unset fields stay unset and keep the proxy's own values.
    """
    st.config = _none_if_empty(st.config)
    st.env = _none_if_empty(st.env)
    st.meta = _none_if_empty(st.meta)
