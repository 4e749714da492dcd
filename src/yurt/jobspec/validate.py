"""Every rule a job must follow (Nomad's Job/TaskGroup/Task.Validate and admission validators).

`validate(job, loc)` runs on a job whose defaults are filled and returns every problem at once,
errors and warnings, each pointing at the most precise place in the job file it can. Rules are
grouped by block: this module has the job, group, network and task rules; services and checks
are in validate_service, connect in validate_connect, policies and resources in
validate_policies, constraints/affinities/spreads in validate_placement. Fields Yurt accepts
but does not act on yet are warned about (or refused) from the table in ignored.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any

from yurt.structs.artifact import artifact_problems
from yurt.structs import JOB_TYPES, Job, NetworkResource, Task, TaskGroup, Template
from yurt.structs.driver_config import config_problems
from yurt.structs.gateway import INGRESS, TERMINATING, gateway_kind

from .errors import Path, Problem
from .ignored import validate_ignored
from .locate import Locator
from yurt.structs.cron import CronError, cron_problem, zone

from .validate_common import MAX_PORT, Issue, Report, dur, is_known_mode
from .validate_connect import validate_group_connect
from .validate_placement import validate_placement
from .validate_policies import (migrate_issues, reschedule_issues, restart_issues, update_issues,
                                validate_ephemeral_disk, validate_logs, validate_resources)
from .validate_service import validate_services
from .validate_volumes import validate_group_volumes, validate_volume_mounts

LIFECYCLE_HOOKS = ("prestart", "poststart", "poststop")
CHANGE_MODES = ("", "noop", "restart", "signal", "script")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def validate(job: Job, loc: Locator) -> list[Problem]:
    """Every problem of the job (errors and warnings), in the order the rules found them."""
    r = Report(loc)
    validate_job(r, job)
    validate_ignored(r, job)
    return r.problems


# --- job -----------------------------------------------------------------------------------

def validate_periodic(r: Report, job: Job) -> None:
    """Nomad's PeriodicConfig.Validate, and a cron that never fires is refused by name."""
    p = job.periodic
    if p is None:
        return
    if job.type not in (None, "batch", "sysbatch"):
        r.error(("Periodic",), f'a periodic job must be of type "batch" or "sysbatch", not "{job.type}"')
    if p.spec and p.specs:
        r.error(("Periodic", "Spec"), 'periodic sets both "cron" and "crons": use one of them')
    specs = p.all_specs()
    if not specs:
        r.error(("Periodic",), 'periodic has no "cron": give it one, like cron = "*/15 * * * *"')
    if p.spec_type != "cron":
        r.error(("Periodic", "SpecType"), f'periodic spec type "{p.spec_type}" is not known: use "cron"')
        return
    try:
        zone(p.time_zone)
    except CronError as e:
        r.error(("Periodic", "TimeZone"), str(e))
        return
    for i, spec in enumerate(specs):
        problem = cron_problem(spec, p.time_zone)
        if problem:
            r.error(("Periodic", "Spec") if p.spec and i == 0 else ("Periodic", "Specs", i - bool(p.spec)),
                    problem)


def validate_parameterized(r: Report, job: Job) -> None:
    pj = job.parameterized_job
    if pj is None or job.dispatched:
        return
    if job.type not in (None, "batch", "sysbatch"):
        r.error(("ParameterizedJob",), f'a parameterized job must be of type "batch" or "sysbatch", not "{job.type}"')
    if pj.payload not in ("", "optional", "required", "forbidden"):
        r.error(("ParameterizedJob", "Payload"), f'payload "{pj.payload}" is not known: use "optional", '
                                                 '"required" or "forbidden"')
    both = set(pj.meta_required or []) & set(pj.meta_optional or [])
    if both:
        r.error(("ParameterizedJob", "MetaOptional"), 'meta keys both required and optional: '
                                                      + ", ".join(sorted(both)))
    if pj.payload == "forbidden":
        for gi, g in enumerate(job.task_groups or []):
            for ti, t in enumerate(g.tasks or []):
                if t.dispatch_payload and t.dispatch_payload.file:
                    r.error(("TaskGroups", gi, "Tasks", ti, "DispatchPayload"),
                            'dispatch_payload is set but the job\'s payload is "forbidden"')


def validate_job(r: Report, job: Job) -> None:
    if not job.id:
        r.error(("ID",), 'job has no ID: give it one as the block label, like job "web" { ... }')
    elif " " in job.id:
        r.error(("ID",), f'job ID "{job.id}" contains a space: use letters, digits, "-" or "_"')
    elif "\0" in job.id:
        r.error(("ID",), 'job ID contains a NUL character: remove it')
    for attr, word in (("name", "name"), ("region", "region"), ("namespace", "namespace")):
        if getattr(job, attr) == "":
            r.error((attr.capitalize(),), f'job {word} is empty: set it or remove the attribute '
                                          'to get the default')
    jt = job.type
    if jt is not None and jt not in JOB_TYPES:
        r.error(("Type",), f'job type "{jt}" is not known: use service, batch, system or sysbatch')
    if job.priority is not None and not 1 <= job.priority <= 100:
        r.error(("Priority",), f'priority {job.priority} is out of range: use 1 to 100')
    for i, dc in enumerate(job.datacenters or []):
        if not dc.strip():
            r.error(("Datacenters", i), 'datacenter name is empty: name a datacenter, or use "*" for all')
    groups = job.task_groups or []
    if not groups:
        r.error(("TaskGroups",), 'job has no groups: add a group "name" { task "name" { ... } } block')
    seen: dict[str, int] = {}
    for gi, g in enumerate(groups):
        if g.name and g.name in seen:
            r.error(("TaskGroups", gi, "Name"), f'group name "{g.name}" is already used by group '
                                                f'{seen[g.name] + 1}: give each group its own name')
        seen.setdefault(g.name, gi)
    validate_placement(r, (), job, jt)
    validate_job_policies(r, job)
    validate_meta(r, job.meta, ("Meta",))
    validate_periodic(r, job)
    validate_parameterized(r, job)
    for gi, g in enumerate(groups):
        validate_group(r, job, gi, g)


def validate_job_policies(r: Report, job: Job) -> None:
    jt = job.type
    for attr, field, check, allowed in (
            ("update", "Update", update_issues, ("service", "system")),
            ("reschedule", "Reschedule", reschedule_issues, ("service", "batch")),
            ("migrate", "Migrate", migrate_issues, ("service",))):
        policy = getattr(job, attr)
        if policy is None:
            continue
        if jt is not None and jt not in allowed:
            r.error((field,), _not_allowed(jt, attr))
        else:
            r.issues((field,), check(policy))


# --- group ---------------------------------------------------------------------------------

def validate_group(r: Report, job: Job, gi: int, g: TaskGroup) -> None:
    base = ("TaskGroups", gi)
    if not g.name:
        r.error(base + ("Name",), 'group has no name: give it one as the block label, like group "api" { ... }')
    elif "\0" in g.name:
        r.error(base + ("Name",), 'group name contains a NUL character: remove it')
    if g.count is not None:
        if g.count < 0:
            r.error(base + ("Count",), f'count {g.count} is negative: use 0 or more')
        elif job.type == "system" and g.count > 1:
            r.error(base + ("Count",), f'a system job runs one allocation per node, so count {g.count} '
                                       'is not allowed: remove count or set it to 1')
    if job.type == "system" and g.update is not None and (g.update.canary or 0) > 0:
        r.warn(r.origin(base + ("Update", "Canary"), ("Update", "Canary")),
               f"update canary {NO_CANARY_SYSTEM}")
    if g.scaling is not None:
        validate_scaling(r, g, base + ("Scaling",))
    for attr, field in (("shutdown_delay", "ShutdownDelay"), ("max_client_disconnect", "MaxClientDisconnect"),
                        ("stop_after_client_disconnect", "StopAfterClientDisconnect")):
        value = getattr(g, attr)
        if value is not None and value < 0:
            r.error(base + (field,), f'{attr} {dur(value)} is negative: use 0 or more')
    if g.stop_after_client_disconnect and job.type not in (None, "service", "batch"):
        r.error(base + ("StopAfterClientDisconnect",), 'stop_after_client_disconnect only applies to '
                                                       'service and batch jobs: remove it')
    if g.disconnect is not None:
        validate_disconnect(r, job, g, base)
    validate_group_tasks(r, g, base)
    validate_group_volumes(r, g, base)
    if g.ephemeral_disk is not None:
        validate_ephemeral_disk(r, g.ephemeral_disk, base + ("EphemeralDisk",))
    group_restart = validate_group_policies(r, job, g, base)
    validate_networks(r, g, base)
    validate_placement(r, base, g, job.type)
    validate_services(r, job, g, base, g.services or [])
    validate_providers(r, g, base)
    validate_group_connect(r, job, gi, g)
    validate_meta(r, g.meta, base + ("Meta",))
    for ti, t in enumerate(g.tasks or []):
        validate_task(r, job, g, base + ("Tasks", ti), t, group_restart)


def validate_scaling(r: Report, g: TaskGroup, base: Path) -> None:
    sc = g.scaling
    assert sc is not None
    if sc.type not in (None, "", "horizontal"):
        r.error(base + ("Type",), f'scaling type "{sc.type}" is not one Yurt knows: use "horizontal" (or leave it out)')
    if sc.max is None:
        r.error(base + ("Max",), "the scaling block has no max: set max = N (the most the group may run)")
        return
    if sc.max < 0:
        r.error(base + ("Max",), f"scaling max {sc.max} is negative: use 0 or more")
    lo = sc.min if sc.min is not None else 0
    if sc.min is not None and sc.min < 0:
        r.error(base + ("Min",), f"scaling min {sc.min} is negative: use 0 or more")
    if lo > sc.max:
        r.error(base + ("Min",), f"scaling min {lo} is more than max {sc.max}")
    if g.count is not None and not lo <= g.count <= sc.max:
        r.error(("TaskGroups",) + tuple(base[1:2]) + ("Count",),
                f"count {g.count} is outside the scaling block's bounds [{lo}, {sc.max}]: change one of them")


def _has_gateway(g: TaskGroup) -> bool:
    return any(s.connect is not None and gateway_kind(s.connect.gateway) in (INGRESS, TERMINATING)
               for s in g.services or [])


RECONCILE_OPTIONS = ("best_score", "longest_running", "keep_original", "keep_replacement")


def validate_disconnect(r: Any, job: Job, g: TaskGroup, base: tuple[Any, ...]) -> None:
    """`disconnect { }` as Nomad validates it, and beside the older fields it replaces."""
    assert g.disconnect is not None
    d, at = g.disconnect, base + ("Disconnect",)
    for attr, field in (("lost_after", "LostAfter"), ("stop_on_client_after", "StopOnClientAfter")):
        value = getattr(d, attr)
        if value is not None and value < 0:
            r.error(at + (field,), f"{attr} {dur(value)} is negative: use 0 or more")
    if d.stop_on_client_after and d.lost_after:
        r.error(at + ("StopOnClientAfter",), "disconnect cannot have both lost_after and stop_on_client_after "
                                             "(as in Nomad): keep one")
    if d.stop_on_client_after and job.type not in (None, "service", "batch"):
        r.error(at + ("StopOnClientAfter",), "stop_on_client_after only applies to service and batch jobs: "
                                             "remove it")
    if d.reconcile and d.reconcile not in RECONCILE_OPTIONS:
        r.error(at + ("Reconcile",), f'reconcile "{d.reconcile}" is not an option: use one of '
                                     f'{", ".join(RECONCILE_OPTIONS)}')
    for old, new, field in (("max_client_disconnect", "lost_after", "MaxClientDisconnect"),
                            ("stop_after_client_disconnect", "stop_on_client_after", "StopAfterClientDisconnect")):
        if getattr(g, old) is not None:
            r.error(base + (field,), f"{old} and a disconnect block cannot both be set (as in Nomad): "
                                     f"write disconnect {{ {new} }} only")


def validate_group_tasks(r: Report, g: TaskGroup, base: Path) -> None:
    tasks = g.tasks or []
    if not tasks and _has_gateway(g):
        return   # the server injects the gateway's proxy task (connect-ingress-<service>, ...)
    if not tasks:
        r.error(base + ("Tasks",), f'group "{g.name}" has no tasks: add a task "name" '
                                   '{ driver = "..." } block')
        return
    seen: dict[str, int] = {}
    leaders = 0
    for ti, t in enumerate(tasks):
        if t.name and t.name in seen:
            r.error(base + ("Tasks", ti, "Name"), f'task name "{t.name}" is already used by task '
                                                  f'{seen[t.name] + 1} of the group: give each task its own name')
        seen.setdefault(t.name, ti)
        if t.leader:
            leaders += 1
            if leaders == 2:
                r.error(base + ("Tasks", ti, "Leader"), f'group "{g.name}" has more than one leader '
                                                        'task: mark only one task with leader = true')
    if not any(t.is_main for t in tasks):
        r.error(base + ("Tasks",), f'group "{g.name}" has only lifecycle tasks: add a main task '
                                   '(one without a lifecycle block)')


def _inherited(mine: Any, parent: Any, check: Callable[[Any], list[Issue]]) -> list[Issue]:
    """Issues of a policy, without those already reported for the policy it was merged from."""
    return check(parent) if parent is not None and mine is not None else []


def validate_group_policies(r: Report, job: Job, g: TaskGroup, base: Path) -> list[Issue]:
    """restart, reschedule, update and migrate of a group; returns the restart issues found.

    The job's update, reschedule and migrate blocks are merged into each group by the defaults:
    a problem of a merged value is reported once, where it was written.
    """
    jt = job.type
    for attr, field, job_attr, job_field, check, allowed in (
            ("update", "Update", "update", "Update", update_issues, ("service", "system")),
            ("reschedule_policy", "ReschedulePolicy", "reschedule", "Reschedule", reschedule_issues,
             ("service", "batch")),
            ("migrate", "Migrate", "migrate", "Migrate", migrate_issues, ("service",))):
        mine, parent = getattr(g, attr), getattr(job, job_attr)
        if mine is None or mine == parent:
            continue
        path = base + (field,)
        if jt is not None and jt not in allowed:
            r.error(r.origin(path, (job_field,)), _not_allowed(jt, job_attr))
        else:
            r.issues(path, check(mine), _inherited(mine, parent, check), parent=(job_field,))
    found = restart_issues(g.restart_policy) if g.restart_policy is not None else []
    r.issues(base + ("RestartPolicy",), found)
    return found


NO_CANARY_SYSTEM = ("has no effect yet in Yurt for a system job: its update rolls max_parallel nodes "
                    "at a time, without canaries")


def _not_allowed(jt: str, block: str) -> str:
    why = {"update": "rolling updates are for service and system jobs",
           "reschedule": "its allocations are tied to nodes",
           "migrate": "migrate is for service jobs"}[block]
    article = "an" if block[0] in "aeiou" else "a"
    return f'a {jt} job cannot have {article} {block} block: remove it ({why})'


# --- network -------------------------------------------------------------------------------

def validate_networks(r: Report, g: TaskGroup, base: Path) -> None:
    nets = g.networks or []
    if len(nets) > 1:
        r.error(base + ("Networks", 1), f'group "{g.name}" has {len(nets)} network blocks, but only '
                                        'one is allowed: merge them into one')
    labels: dict[str, Path] = {}
    static: dict[tuple[str, int], str] = {}
    for ni, net in enumerate(nets):
        npath = base + ("Networks", ni)
        validate_network(r, net, npath)
        ports = [(npath + ("ReservedPorts", i), p) for i, p in enumerate(net.reserved_ports or [])]
        ports += [(npath + ("DynamicPorts", i), p) for i, p in enumerate(net.dynamic_ports or [])]
        # In file order, so the second declaration of a label or static port is the one reported.
        ports.sort(key=lambda item: r.loc.position(item[0]))
        for ppath, p in ports:
            if not p.label:
                r.error(ppath, 'port has no label: name it, like port "http" { ... }')
            elif p.label in labels:
                r.error(ppath + ("Label",), f'port label "{p.label}" is declared twice in group '
                                            f'"{g.name}": give each port its own label')
            labels.setdefault(p.label, ppath)
            if p.value:
                host_net = p.host_network or "default"
                if not 1 <= p.value <= MAX_PORT:
                    r.error(ppath + ("Value",), f'static port {p.value} is out of range: use 1 to {MAX_PORT}')
                elif (host_net, p.value) in static and not p.ignore_collision:
                    r.error(ppath + ("Value",), f'static port {p.value} is already used by port '
                                                f'"{static[(host_net, p.value)]}": use another port, '
                                                'or ignore_collision = true in host mode')
                static.setdefault((host_net, p.value), p.label)
            if not -1 <= p.to <= MAX_PORT:
                r.error(ppath + ("To",), f'port "{p.label}" maps to {p.to}, which is out of range: '
                                         f'use 1 to {MAX_PORT}, or -1 for the same number as the host port')
            if p.ignore_collision and net.effective_mode != "host":
                r.error(ppath + ("IgnoreCollision",), f'ignore_collision only works in host mode, not '
                                                      f'"{net.effective_mode}": remove it')


def validate_network(r: Report, net: NetworkResource, path: Path) -> None:
    mode = net.effective_mode
    if not is_known_mode(mode):
        r.error(path + ("Mode",), f'network mode "{net.mode}" is not known: use host, bridge, none '
                                  'or cni/<network name>')
    if net.hostname and "${" not in net.hostname:
        if not _DNS_NAME.match(net.hostname):
            r.error(path + ("Hostname",), f'hostname "{net.hostname}" is not a valid DNS name: use '
                                          'letters, digits, dashes and dots')
    if net.hostname and mode == "host":
        r.warn(path + ("Hostname",), 'hostname has no effect in host mode: set mode = "bridge" '
                                     'or remove hostname')
    if net.cni is not None:
        for key, value in (net.cni.args or {}).items():
            if ";" in key or ";" in str(value):
                r.error(path + ("CNI", "Args", key), f'cni arg "{key}" contains ";", which separates '
                                                     'CNI_ARGS: remove it')


def validate_providers(r: Report, g: TaskGroup, base: Path) -> None:
    """All services of a group, in the group and its tasks, use one provider."""
    found: list[tuple[Path, str]] = []
    for si, s in enumerate(g.services or []):
        found.append((base + ("Services", si, "Provider"), s.provider or "consul"))
    for ti, t in enumerate(g.tasks or []):
        for si, s in enumerate(t.services or []):
            found.append((base + ("Tasks", ti, "Services", si, "Provider"), s.provider or "consul"))
    if found:
        first = found[0][1]
        for path, provider in found[1:]:
            if provider != first:
                r.error(path, f'services of group "{g.name}" mix providers "{first}" and '
                              f'"{provider}": use one provider for all of them')
                break


# --- task ----------------------------------------------------------------------------------

def validate_task(r: Report, job: Job, g: TaskGroup, base: Path, t: Task,
                  group_restart: list[Issue]) -> None:
    if not t.name:
        r.error(base + ("Name",), 'task has no name: give it one as the block label, like task "web" { ... }')
    elif t.name == "alloc":
        r.error(base + ("Name",), 'a task cannot be named "alloc" (the shared alloc directory has '
                                  'that name): rename it')
    elif "/" in t.name or "\\" in t.name:
        r.error(base + ("Name",), f'task name "{t.name}" contains a slash: remove "/" and "\\"')
    elif "\0" in t.name:
        r.error(base + ("Name",), 'task name contains a NUL character: remove it')
    dp = t.dispatch_payload
    if dp and dp.file and (posixpath.isabs(dp.file) or ".." in posixpath.normpath(dp.file).split("/")):
        r.error(base + ("DispatchPayload", "File"), f'dispatch_payload file "{dp.file}" escapes the task\'s '
                                                    'local/ directory: use a relative path inside it')
    if not t.driver:
        r.error(base + ("Driver",), 'task has no driver: set driver, like driver = "docker" or "raw_exec"')
    if t.lifecycle is not None:
        hook = t.lifecycle.hook
        if not hook:
            r.error(base + ("Lifecycle", "Hook"), 'lifecycle has no hook: set hook = "prestart", '
                                                  '"poststart" or "poststop"')
        elif hook not in LIFECYCLE_HOOKS:
            r.error(base + ("Lifecycle", "Hook"), f'lifecycle hook "{hook}" is not known: use '
                                                  'prestart, poststart or poststop')
    validate_task_timeouts(r, job, g, base, t)
    if t.resources is not None:
        validate_resources(r, t.resources, base + ("Resources",))
    if t.log_config is not None:
        validate_logs(r, t.log_config, base + ("LogConfig",), g.ephemeral_disk)
    validate_templates(r, t, base)
    for i, a in enumerate(t.artifacts or []):
        for where, problem in artifact_problems(a):
            r.error(base + ("Artifacts", i) + where, problem)
    if t.restart_policy is not None:
        inherited = group_restart if g.restart_policy is not None else []
        r.issues(base + ("RestartPolicy",), restart_issues(t.restart_policy), inherited,
                 parent=base[:2] + ("RestartPolicy",))
    validate_services(r, job, g, base, t.services or [], task=t)
    validate_placement(r, base, t, job.type, task_level=True)
    validate_env(r, t.env, base + ("Env",))
    validate_meta(r, t.meta, base + ("Meta",))
    validate_volume_mounts(r, g, t, base)
    for key, message in config_problems(t.driver, t.config):
        r.error(base + ("Config", key), message)


def validate_task_timeouts(r: Report, job: Job, g: TaskGroup, base: Path, t: Task) -> None:
    kt = t.kill_timeout
    if kt is not None and kt < 0:
        r.error(base + ("KillTimeout",), f'kill_timeout {dur(kt)} is negative: use 0 or more')
    elif kt and job.type == "service" and g.update is not None:
        pd = g.update.progress_deadline
        if pd and kt > pd and (g.update.max_parallel or 0) > 0:
            r.error(base + ("KillTimeout",), f'kill_timeout {dur(kt)} is longer than the group '
                                             f'progress_deadline {dur(pd)}: lower kill_timeout or '
                                             'raise progress_deadline')
    if t.shutdown_delay < 0:
        r.error(base + ("ShutdownDelay",), f'shutdown_delay {dur(t.shutdown_delay)} is negative: '
                                           'use 0 or more')


def validate_templates(r: Report, t: Task, base: Path) -> None:
    seen: dict[str, int] = {}
    for i, tpl in enumerate(t.templates or []):
        path = base + ("Templates", i)
        validate_template(r, tpl, path)
        if (tpl.change_mode == "script" and tpl.change_script is not None
                and not (t.driver == "raw_exec" and not t.user)):
            what = (f'as task "{t.name}"\'s user "{t.user}"' if t.driver == "raw_exec"
                    else f'inside task "{t.name}" (driver "{t.driver}")')
            r.error(path + ("ChangeMode",), f'a template change_script cannot run {what} in Yurt yet: Yurt runs '
                                            "it on the node as the agent's user, which would escape the task's "
                                            'isolation; use change_mode = "restart" or "signal", or a raw_exec '
                                            'task without user')
        if tpl.dest_path and tpl.dest_path in seen:
            r.error(path + ("DestPath",), f'template destination "{tpl.dest_path}" is already used by '
                                          f'template {seen[tpl.dest_path] + 1} of the task: write each '
                                          'template to its own file')
        seen.setdefault(tpl.dest_path, i)


def validate_template(r: Report, tpl: Template, path: Path) -> None:
    if not tpl.source_path and not tpl.embedded_tmpl:
        r.error(path, 'template has nothing to render: set data = "..." or source = "<file>"')
    if tpl.embedded_tmpl:   # parsed now: a syntax error is the job's, with the template's line:col
        from yurt.gotemplate import TemplateError, parse
        try:
            parse(tpl.embedded_tmpl, name=tpl.dest_path or "data", left_delim=tpl.left_delim or "{{",
                  right_delim=tpl.right_delim or "}}")
        except TemplateError as e:
            r.error(path + ("EmbeddedTmpl",), f"template data does not parse: {e}")
    elif tpl.source_path and posixpath.normpath(tpl.source_path).startswith(".."):
        r.error(path + ("SourcePath",), f'template source "{tpl.source_path}" escapes the task directory: '
                                        'use a path inside it, like "local/config.tpl"')
    if not tpl.dest_path:
        r.error(path + ("DestPath",), 'template has no destination: set destination, like '
                                      '"local/config.txt"')
    elif posixpath.normpath(posixpath.join("task", tpl.dest_path.lstrip("/"))).startswith(".."):
        r.error(path + ("DestPath",), f'template destination "{tpl.dest_path}" escapes the allocation '
                                      'directory: use a path inside the task directory, like "local/..."')
    mode = tpl.change_mode
    if mode not in CHANGE_MODES:
        r.error(path + ("ChangeMode",), f'change_mode "{mode}" is not known: use restart, noop, '
                                        'signal or script')
    elif mode == "signal":
        if not tpl.change_signal:
            r.error(path + ("ChangeSignal",), 'change_mode = "signal" needs a signal: set '
                                              'change_signal, like "SIGHUP"')
        if tpl.envvars:
            r.error(path + ("Envvars",), 'an env template cannot use change_mode = "signal" (the '
                                         'environment is read only at start): use "restart"')
    elif mode == "script":
        if tpl.change_script is None or not tpl.change_script.command:
            r.error(path + ("ChangeScript",), 'change_mode = "script" needs a script: add '
                                              'change_script { command = "..." }')
        elif tpl.change_script.timeout is not None and tpl.change_script.timeout < 0:
            r.error(path + ("ChangeScript", "Timeout"), 'change_script timeout is negative: use 0 or more')
    if tpl.change_signal and mode != "signal":
        r.warn(path + ("ChangeSignal",), 'change_signal is ignored unless change_mode = "signal": '
                                         'set change_mode = "signal" or remove change_signal')
    if tpl.splay is not None and tpl.splay < 0:
        r.error(path + ("Splay",), f'splay {dur(tpl.splay)} is negative: use 0 or more')
    if tpl.perms and not re.fullmatch(r"0?[0-7]{1,4}", tpl.perms):
        r.error(path + ("Perms",), f'perms "{tpl.perms}" is not an octal file mode: write it like "0644"')
    if tpl.wait is not None:
        lo, hi = tpl.wait.min, tpl.wait.max
        if (lo is not None and lo < 0) or (hi is not None and hi < 0):
            r.error(path + ("Wait",), 'template wait min and max cannot be negative: use 0 or more')
        elif lo is not None and hi is not None and lo > hi:
            r.error(path + ("Wait", "Min"), f'template wait min {dur(lo)} is longer than max '
                                            f'{dur(hi)}: swap or adjust them')


def validate_env(r: Report, env: dict[str, str] | None, path: Path) -> None:
    for key in env or {}:
        if not key or "=" in key or "\0" in key:
            r.error(path + (key,), f'environment variable name "{key}" cannot be set (empty, or '
                                   'containing "=" or NUL): rename it')


def validate_meta(r: Report, meta: dict[str, str] | None, path: Path) -> None:
    for key in meta or {}:
        if not key.strip():
            r.error(path + (key,), 'meta key is empty: give every meta entry a name')
