"""Rules for service and check blocks (Nomad's Service/ServiceCheck validation)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from yurt.structs import CheckRestart, Job, Service, ServiceCheck, Task, TaskGroup

from .errors import Path
from .validate_common import (MAX_PORT, SECOND, Report, dur, group_mode, group_ports,
                              is_group_isolated, is_number, strip_interpolation)
from .validate_connect import validate_connect

_RFC1123 = re.compile(r"^(?i:[a-z0-9]|[a-z0-9][a-z0-9\-]{0,61}[a-z0-9])$")
ADDRESS_MODES = ("", "auto", "host", "driver", "alloc", "alloc_ipv6")
CHECK_ADDRESS_MODES = ("", "host", "driver", "alloc", "alloc_ipv6")
ON_UPDATE = ("", "require_healthy", "ignore_warnings", "ignore")
CHECK_TYPES = {"consul": ("http", "tcp", "grpc", "script"), "nomad": ("http", "tcp")}
INITIAL_STATUS = ("", "passing", "warning", "critical")


def validate_services(r: Report, job: Job, group: TaskGroup, base: Path,
                      services: list[Service], task: Task | None = None) -> None:
    """The services of a group (task None) or of one task; `base` is the owner's path."""
    seen: dict[tuple, int] = {}
    for si, s in enumerate(services):
        path = base + ("Services", si)
        validate_service(r, job, group, s, path, task)
        key = (s.name, s.port_label) if task else (s.name, s.task_name, s.port_label)
        if s.name and key in seen:
            port = f' on port "{s.port_label}"' if s.port_label else ""
            r.error(path + ("Name",), f'service "{s.name}"{port} is defined twice '
                                      f'(see service {seen[key] + 1}): give it another name or port')
        seen.setdefault(key, si)


def validate_service(r: Report, job: Job, group: TaskGroup, s: Service, path: Path,
                     task: Task | None) -> None:
    if not s.name:
        r.error(path + ("Name",), 'service has no name: set name = "..." '
                                  '(letters, digits and dashes)')
    elif not _RFC1123.match(strip_interpolation(s.name)):
        r.error(path + ("Name",), f'service name "{s.name}" is not a valid DNS label: use 1 to 63 '
                                  'letters, digits and dashes, starting and ending with a letter or digit')
    elif s.connect is not None and "${" in s.name:
        r.error(path + ("Name",), f'the Connect service "{s.name}" has an interpolated name: a Connect '
                                  "service's name is its identity in the mesh (its certificate, the "
                                  "intentions that name it), so Yurt needs it written out; interpolate its "
                                  "tags or meta instead")
    provider = s.provider or "consul"
    if provider not in CHECK_TYPES:
        r.error(path + ("Provider",), f'service provider "{s.provider}" is not known: '
                                      'use "consul" or "nomad"')
    if s.address_mode not in ADDRESS_MODES:
        r.error(path + ("AddressMode",), f'address_mode "{s.address_mode}" is not known: '
                                         'use auto, host, driver, alloc or alloc_ipv6')
    elif task is None and s.address_mode == "driver":
        r.error(path + ("AddressMode",), 'a group service cannot use address_mode = "driver": '
                                         'use "auto", "host" or "alloc", or move the service into the task')
    elif task is not None and s.address_mode in ("alloc", "alloc_ipv6"):
        r.error(path + ("AddressMode",), f'a task service cannot use address_mode = '
                                         f'"{s.address_mode}": move the service into the group')
    if s.address and s.address_mode not in ("", "auto"):
        r.error(path + ("Address",), f'address can only be set with address_mode = "auto", not '
                                     f'"{s.address_mode}": remove one of them')
    if s.on_update not in ON_UPDATE:
        r.error(path + ("OnUpdate",), f'on_update "{s.on_update}" is not known: '
                                      'use require_healthy, ignore_warnings or ignore')
    if s.weights is not None:
        for name in ("passing", "warning"):
            if getattr(s.weights, name) < 1:
                r.error(path + ("Weights", name.capitalize()),
                        f'weights.{name} must be at least 1: raise it or remove it')
    _validate_service_port(r, group, s, path)
    if task is None and s.task_name and group.task(s.task_name) is None:
        r.error(path + ("TaskName",), f'task "{s.task_name}" is not a task of group '
                                      f'"{group.name}": name one of its tasks')
    if s.check_restart is not None:
        _validate_check_restart(r, s.check_restart, path + ("CheckRestart",))
    if s.connect is not None:
        validate_connect(r, job, group, s, path, group_level=task is None)
    seen: dict[str, int] = {}
    for ci, check in enumerate(s.checks or []):
        cpath = path + ("Checks", ci)
        validate_check(r, group, s, check, cpath, task)
        if check.name and check.name in seen:
            if check.name == f'service: "{s.name}" check':
                r.error(cpath + ("Name",), f'service "{s.name}" has more than one check without a '
                                           'name: set name = "..." in each check')
            else:
                r.error(cpath + ("Name",), f'check "{check.name}" is defined twice in service '
                                           f'"{s.name}": give each check its own name')
        seen.setdefault(check.name, ci)


def _validate_service_port(r: Report, group: TaskGroup, s: Service, path: Path) -> None:
    label = s.port_label
    if not label:
        return
    if is_number(label):
        if not 1 <= int(label) <= MAX_PORT:
            r.error(path + ("PortLabel",), f'port {label} is out of range: use 1 to {MAX_PORT}')
    elif label not in group_ports(group):
        r.error(path + ("PortLabel",), f'port "{label}" is not a port label of group '
                                       f'"{group.name}": declare it with network {{ port "{label}" {{}} }} '
                                       'or use a number')


def _validate_check_restart(r: Report, cr: CheckRestart, path: Path) -> None:
    if cr.limit < 0:
        r.error(path + ("Limit",), f'check_restart limit {cr.limit} is negative: use 0 or more')
    if cr.grace is not None and cr.grace < 0:
        r.error(path + ("Grace",), f'check_restart grace {dur(cr.grace)} is negative: use 0 or more')


def validate_check(r: Report, group: TaskGroup, s: Service, c: ServiceCheck, path: Path,
                   task: Task | None) -> None:
    provider = s.provider if s.provider in CHECK_TYPES else "consul"
    types = CHECK_TYPES[provider]
    if not c.type:
        r.error(path + ("Type",), f'check has no type: set type to one of {", ".join(types)}')
    elif c.type not in types:
        r.error(path + ("Type",), f'check type "{c.type}" is not supported by provider '
                                  f'{provider}: use one of {", ".join(types)}')
    port = c.port_label or s.port_label
    if c.type in ("http", "tcp", "grpc") and not port and not c.expose:
        r.error(path + ("PortLabel",), f'a {c.type} check needs a port: set port on the check '
                                       'or on the service')
    if c.port_label:
        if is_number(c.port_label):
            if c.address_mode != "driver":
                r.error(path + ("PortLabel",), f'check port {c.port_label} is a number, which needs '
                                               'address_mode = "driver": use a port label or set address_mode')
        elif c.port_label not in group_ports(group):
            r.error(path + ("PortLabel",), f'port "{c.port_label}" is not a port label of group '
                                           f'"{group.name}": declare it with network '
                                           f'{{ port "{c.port_label}" {{}} }}')
    if c.type == "http":
        if not c.path:
            r.error(path + ("Path",), 'an http check needs a path: set path, like path = "/health"')
        elif urlparse(c.path).scheme:
            r.error(path + ("Path",), f'check path "{c.path}" must be relative: write only '
                                      'the path, like "/health"')
    if c.type == "script" and not c.command:
        r.error(path + ("Command",), 'a script check needs a command: set command (and args)')
    if c.type == "script" and task is None and not (c.task_name or s.task_name):
        r.error(path + ("TaskName",), 'a script check in a group service must say which task runs '
                                      'it: set task on the check or the service')
    if task is None and c.task_name and group.task(c.task_name) is None:
        r.error(path + ("TaskName",), f'task "{c.task_name}" is not a task of group '
                                      f'"{group.name}": name one of its tasks')
    for name, value in (("Interval", c.interval), ("Timeout", c.timeout)):
        if value < SECOND:
            what = "is missing" if value == 0 else f"is {dur(value)}"
            r.error(path + (name,), f'check {name.lower()} {what}: set it to 1s or more, like "10s"')
    if c.interval >= SECOND and c.timeout > c.interval:
        r.warn(path + ("Timeout",), f'check timeout {dur(c.timeout)} is longer than its interval '
                                    f'{dur(c.interval)}: checks will overlap, lower the timeout')
    if c.initial_status not in INITIAL_STATUS:
        r.error(path + ("InitialStatus",), f'initial_status "{c.initial_status}" is not known: '
                                           'use passing, warning or critical')
    if c.address_mode == "auto":
        r.error(path + ("AddressMode",), 'a check cannot use address_mode = "auto": '
                                         'use host, driver or alloc, or remove it')
    elif c.address_mode not in CHECK_ADDRESS_MODES:
        r.error(path + ("AddressMode",), f'check address_mode "{c.address_mode}" is not known: '
                                         'use host, driver or alloc')
    on_update = c.on_update or s.on_update
    if c.on_update not in ON_UPDATE:
        r.error(path + ("OnUpdate",), f'on_update "{c.on_update}" is not known: '
                                      'use require_healthy, ignore_warnings or ignore')
    elif on_update == "ignore" and (c.check_restart or s.check_restart):
        r.error(path + ("OnUpdate",), 'on_update = "ignore" cannot be combined with check_restart: '
                                      'remove one of them')
    if c.check_restart is not None:
        _validate_check_restart(r, c.check_restart, path + ("CheckRestart",))
    if len(c.notes) > 255:
        r.error(path + ("Notes",), f'check notes are {len(c.notes)} characters long: '
                                   'shorten them to 255 at most')
    for name in ("success_before_passing", "failures_before_critical", "failures_before_warning"):
        if getattr(c, name) < 0:
            r.error(path + ("".join(w.capitalize() for w in name.split("_")),),
                    f'{name} is negative: use 0 or more')
    if c.type == "tcp" and s.has_sidecar:
        r.error(path + ("Type",), f'a tcp check cannot work on connect service "{s.name}", whose '
                                  'port is only open inside the group: use an http or grpc check '
                                  'with expose = true')
    if c.expose:
        _validate_expose_check(r, group, s, c, path, task)


def _validate_expose_check(r: Report, group: TaskGroup, s: Service, c: ServiceCheck,
                           path: Path, task: Task | None) -> None:
    where = path + ("Expose",)
    if c.type not in ("http", "grpc"):
        r.error(where, f'expose only works for http and grpc checks, not "{c.type}": '
                       'remove expose = true')
    elif task is not None or not s.has_sidecar:
        r.error(where, 'expose = true needs a group service with connect { sidecar_service {} }: '
                       'remove expose or add the sidecar')
    elif not is_group_isolated(group_mode(group)):
        r.error(where, 'expose = true needs the group network in bridge or cni mode: '
                       'set network { mode = "bridge" }')
    elif c.type == "http" and c.path and not c.path.startswith("/"):
        r.error(path + ("Path",), f'an exposed check path must start with "/", not "{c.path}": '
                                  f'write "/{c.path}"')
    elif s.port_label and not is_number(s.port_label):
        port = group_ports(group).get(s.port_label)
        if port is not None and not port.value and not port.to:
            r.error(path + ("Expose",), f'cannot expose a check for service "{s.name}" whose port '
                                        f'"{s.port_label}" is dynamic: give the port a static or '
                                        '"to" value, or use a number as the service port')
