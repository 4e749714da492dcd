"""What Yurt accepts in a job file but does not act on yet: the source of the "no effect" warnings.

Nothing a job file says is silently ignored. Every field the decoder accepts (the structs
reachable from `Job`) either takes effect, or is in `RULES` below: a warning that names it and
says what happens instead, or, where ignoring it would be unsafe, an error that refuses the job.
Nomad prints such notes as "Job Warnings:" in `job run`, `job plan` and `job validate`; Yurt's
CLI and the API's register, plan and validate responses (`Warnings`) carry them the same way.

The audit behind the table (who reads each field; `update` is left out: deployments use it):

- Job: namespace, ID, name, type, priority, all_at_once, datacenters, node_pool,
  constraint/affinity/spread, reschedule, migrate, meta: the server and the scheduler. region:
  the server refuses a job for a region other than its own ("global" means its own), which Nomad
  would forward there (server/admission.py check_region; the job file alone cannot tell).
- Group: count, constraint/affinity/spread, network (mode, hostname, dns, cni.args, ports'
  label/static/to/host_network), service, restart, reschedule, migrate, ephemeral_disk size,
  meta, shutdown_delay (waited after the services are deregistered), ephemeral_disk sticky and
  migrate (on the same node, or from another node's snapshot), volume (host volumes): the
  scheduler, the client's alloc dir, network and service hooks. Not read: max_client_disconnect,
  disconnect lost_after and reconcile, network mbits/device/cidr/ip, port ignore_collision.
- Task: driver, config, user, lifecycle, env, meta, resources cpu/memory/memory_max, restart,
  kill_timeout, kill_signal, shutdown_delay, logs, leader, constraint/affinity, service (as a
  group service, registered with the allocation, its checks and restarts the task's), template
  and restart render_templates (the client's template hook), artifact (the client's artifact
  hook): the scheduler and the client.
  Not read: resources cores and secrets.
- Group service: name, port, tags, meta, canary_tags and canary_meta (a canary's, until it is
  promoted), address, tagged_addresses, enable_tag_override, check (name, type, command, args,
  path, protocol, method, header, body, port, interval, timeout, initial_status, tls_skip_verify,
  grpc_service, grpc_use_tls,
  success_before_passing, failures_before_critical, check_restart, on_update, task, expose: the
  checks run inside the group's namespace, so an exposed check works without a listener),
  check_restart, on_update, task, connect sidecar_service (port, tags, meta, proxy
  local_service_address/port, upstreams destination_name/local_bind_address/local_bind_port,
  transparent_proxy: client/network/tproxy.py, mesh_inbound.py and the sidecar; expose paths:
  mesh/expose.py),
  sidecar_task: the client's service hook and the server's sidecar injection; connect gateway
  (ingress and terminating, structs/gateway.py: the server injects the gateway's proxy task;
  a mesh gateway is warned about in validate_connect). Not read: the rest, listed below.

Two rules need more than one field, and are functions below the table: a `script` check runs on
the node as the agent's user (client/checks.py), so it is refused unless its task runs that way
too (raw_exec without `user`); and a `sidecar_task` is merged over Yurt's own proxy, so its
`config` keys the proxy does not read, or a `driver` that replaces the proxy, are warned about.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from yurt.structs import Job, Service, SidecarTask, TaskGroup
from yurt.structs.driver_config import CONNECT_PROXY_KEYS

from .validate_common import Report

# Path prefixes, "*" standing for any list index.
_G = ("TaskGroups", "*")
_T = _G + ("Tasks", "*")
_S = _G + ("Services", "*")
_C = _S + ("Checks", "*")
_CONNECT = _S + ("Connect",)
_PROXY = _CONNECT + ("SidecarService", "Proxy")
_UP = _PROXY + ("Upstreams", "*")
_NET = _G + ("Networks", "*")


@dataclass(frozen=True)
class Rule:
    """A field Yurt does not act on: where it is (a JSON path pattern) and what to tell the user.

    The field counts as set when its value is not empty (None, "", 0, false, [], {}) and not
    one of `unset` (the default Nomad fills in); with `only`, when it is one of those values;
    with `present`, whenever it is there at all (a block, even empty). `refuse` makes it an
    error. With `inherits`, a value equal to the one at that path (a group policy merged into
    its tasks) is reported once, where the group has it.
    """

    path: tuple[str, ...]
    message: str
    unset: tuple[Any, ...] = ()
    only: tuple[Any, ...] = ()
    refuse: bool = False
    inherits: tuple[str, ...] = ()
    present: bool = False

    def is_set(self, value: Any) -> bool:
        if self.present:
            return value is not None
        if self.only:
            return value in self.only
        if value is None or value is False or value in ("", [], {}) or (type(value) is int and value == 0):
            return False
        return value not in self.unset


NO_EFFECT = "has no effect yet in Yurt"

_ID = _T + ("Identity",)
_ONLY_DEFAULT = ("Yurt issues the task's default workload identity only (env, file); remove it, or the "
                 "whole identity block")

RULES: tuple[Rule, ...] = (
    # --- job ----------------------------------------------------------------------------------
    Rule(("UI",), "ui is kept with the job (the API returns it) but has no effect yet in Yurt's web UI",
         present=True),
    # --- task identity ------------------------------------------------------------------------
    Rule(_ID + ("Name",), f"a named identity is not supported: {_ONLY_DEFAULT}", unset=("default",),
         refuse=True),
    Rule(_ID + ("Audience",), f"aud is not supported: {_ONLY_DEFAULT}", refuse=True),
    Rule(_ID + ("TTL",), f"ttl is not supported (the default identity does not expire): {_ONLY_DEFAULT}",
         refuse=True),
    Rule(_ID + ("Filepath",), f"filepath is not supported (the file is secrets/nomad_token): {_ONLY_DEFAULT}",
         refuse=True),
    Rule(_ID + ("ChangeMode",), f"change_mode is not supported: {_ONLY_DEFAULT}", refuse=True),
    Rule(_ID + ("ChangeSignal",), f"change_signal is not supported: {_ONLY_DEFAULT}", refuse=True),
    Rule(_ID + ("ServiceName",), f"service_name is not supported: {_ONLY_DEFAULT}", refuse=True),
    # --- group --------------------------------------------------------------------------------
    Rule(_G + ("Update", "Stagger"),
         f"update stagger {NO_EFFECT}: a deployment rolls max_parallel allocations at a time, each "
         "next one as soon as the last is healthy (Nomad reads stagger only for old system jobs)",
         unset=(30_000_000_000,)),
    Rule(_G + ("MaxClientDisconnect",),
         f"max_client_disconnect {NO_EFFECT}: allocations of a node that stops heartbeating are "
         "replaced as lost, as if it were not set"),
    Rule(_G + ("Disconnect", "LostAfter"),
         f"disconnect lost_after {NO_EFFECT}: allocations of a node that stops heartbeating are "
         "replaced as lost, as if it were not set"),
    Rule(_G + ("Disconnect", "Reconcile"),
         f"disconnect reconcile {NO_EFFECT}: it chooses between an allocation and its replacement "
         "after lost_after, which Yurt does not read", unset=("best_score",)),
    Rule(_G + ("Disconnect", "Replace"),
         "disconnect replace = false cannot be honoured yet: the allocations of a node that stops "
         "heartbeating are replaced as lost, so two copies could run; remove it, or use "
         "stop_on_client_after so that the disconnected client stops its copy first",
         only=(False,), refuse=True),
    Rule(_NET + ("MBits",), f"mbits {NO_EFFECT}: no bandwidth is reserved (Nomad ignores it too)"),
    Rule(_NET + ("Device",), f"device {NO_EFFECT}: the group gets its address from its network mode"),
    Rule(_NET + ("CIDR",), f"cidr {NO_EFFECT}: the group gets its address from its network mode"),
    Rule(_NET + ("IP",), f"ip {NO_EFFECT}: the group gets its address from its network mode"),
    Rule(_NET + ("ReservedPorts", "*", "IgnoreCollision"),
         f"ignore_collision {NO_EFFECT}: the scheduler still gives a static port to one allocation "
         "per node"),
    Rule(_NET + ("DynamicPorts", "*", "IgnoreCollision"),
         f"ignore_collision {NO_EFFECT}: it only applies to static ports"),
    # --- task ---------------------------------------------------------------------------------
    Rule(_T + ("Resources", "Cores"),
         f"cores {NO_EFFECT}: no core is reserved or pinned, and the task gets no CPU reservation; "
         "ask for cpu (in MHz) instead"),
    Rule(_T + ("Resources", "SecretsMB"),
         f"secrets {NO_EFFECT}: the secrets directory is a plain directory (mode 0700) without a "
         "size limit"),
    # --- group service ------------------------------------------------------------------------
    Rule(_S + ("AddressMode",),
         f"address_mode {NO_EFFECT}: the service is registered with the node's address (the "
         "allocation's address when port is a number)", unset=("auto",)),
    Rule(_S + ("Cluster",), f"cluster {NO_EFFECT}: services are registered in Yurt's own catalog",
         unset=("default",)),
    Rule(_S + ("Kind",), f"kind {NO_EFFECT}: the service is registered as a plain service"),
    Rule(_S + ("Weights",), f"weights {NO_EFFECT}: DNS and the mesh treat every instance alike",
         present=True),
    Rule(_S + ("Provider",),
         f'provider "nomad" {NO_EFFECT}: the service is registered in Yurt\'s catalog, which answers '
         "Consul's API (/v1/catalog, /v1/health), not Nomad's /v1/services", only=("nomad",)),
    # --- check --------------------------------------------------------------------------------
    Rule(_C + ("AddressMode",),
         f"address_mode {NO_EFFECT}: the check runs inside the group's network namespace "
         "(bridge) or against the node's address (host)"),
    Rule(_C + ("Advertise",), f"advertise {NO_EFFECT}"),
    Rule(_C + ("Notes",), f"notes {NO_EFFECT}: the check is registered without them"),
    Rule(_C + ("TLSServerName",),
         f"tls_server_name {NO_EFFECT}: the certificate is verified against the address checked"),
    Rule(_C + ("FailuresBeforeWarning",),
         f"failures_before_warning {NO_EFFECT}: a failing check goes critical"),
    # --- connect ------------------------------------------------------------------------------
    Rule(_CONNECT + ("SidecarTask", "Resources", "Cores"),
         f"cores {NO_EFFECT}: no core is reserved or pinned for the sidecar; ask for cpu (in MHz) instead"),
    Rule(_CONNECT + ("SidecarTask", "Resources", "SecretsMB"),
         f"secrets {NO_EFFECT}: the secrets directory is a plain directory (mode 0700) without a "
         "size limit"),
    Rule(_CONNECT + ("SidecarService", "DisableDefaultTCPCheck"),
         f"disable_default_tcp_check {NO_EFFECT}: the sidecar's listening check is always registered"),
    Rule(_UP + ("Datacenter",),
         f"upstream datacenter {NO_EFFECT}: the upstream is resolved as if it were not set"),
    Rule(_UP + ("MeshGateway", "Mode"),
         f"mesh_gateway {NO_EFFECT}: upstream traffic goes directly to the service's sidecars",
         unset=("none",)),
    Rule(_UP + ("Config",), f"upstream config {NO_EFFECT}: Yurt's proxy takes no options from the job"),
    Rule(_UP + ("LocalBindSocketMode",),
         f"local_bind_socket_mode {NO_EFFECT}: upstreams listen on TCP ports"),
    Rule(_UP + ("LocalBindSocketPath",),
         "local_bind_socket_path cannot be honoured yet: Yurt's proxy listens for upstreams on TCP "
         "ports only, so the task would find no socket; set local_bind_port instead", refuse=True),
    Rule(_UP + ("DestinationPeer",),
         "destination_peer cannot be honoured: Yurt has no cluster peering, and the upstream would "
         "reach this cluster's service of the same name instead; remove it", refuse=True),
    Rule(_UP + ("DestinationPartition",),
         "destination_partition cannot be honoured: Yurt has no admin partitions, and the upstream "
         'would reach the service of the same name in "default" instead; remove it',
         unset=("default",), refuse=True),
    Rule(_UP + ("DestinationNamespace",),
         "destination_namespace cannot be honoured: Yurt's mesh has one namespace, and the upstream "
         'would reach the service of the same name in "default" instead; remove it',
         unset=("default",), refuse=True),
    Rule(_UP + ("DestinationType",),
         "destination_type cannot be honoured: Yurt resolves an upstream by service name only, so "
         "a prepared query would be taken for a service of that name; remove it or set "
         'destination_type = "service"', unset=("service",), refuse=True),
)


def validate_ignored(r: Report, job: Job) -> None:
    """A warning for every field of `RULES` the job sets, an error for those refused, and the
    rules that depend on more than one field: script checks, sidecar_task driver and config."""
    doc = job.to_json()
    for rule in RULES:
        for path, value in _find(doc, rule.path, ()):
            if not rule.is_set(value):
                continue
            if rule.inherits and _value(doc, _bind(rule.inherits, path)) == value:
                continue
            if rule.refuse:
                r.error(path, rule.message)
            else:
                r.warn(path, rule.message)
    for gi, group in enumerate(job.task_groups or []):
        for si, service in enumerate(group.services or []):
            base = ("TaskGroups", gi, "Services", si)
            _script_checks(r, group, service, base)
            if service.connect is not None and service.connect.sidecar_task is not None:
                _sidecar_task(r, service.connect.sidecar_task, base + ("Connect", "SidecarTask"))
            sidecar = service.connect.sidecar_service if service.connect is not None else None
            if sidecar is not None and sidecar.proxy is not None and sidecar.proxy.config:
                _proxy_config(r, sidecar.proxy.config, base + ("Connect", "SidecarService", "Proxy", "Config"))


def _script_checks(r: Report, group: TaskGroup, service: Service, base: tuple[Any, ...]) -> None:
    """A script check runs on the node, as the agent's user, in the group's network namespace
    (client/checks.py): refused unless its task runs that way too (raw_exec, no user)."""
    for ci, check in enumerate(service.checks or []):
        if check.type != "script":
            continue
        task = group.task(check.task_name or service.task_name)
        if task is None or (task.driver == "raw_exec" and not task.user):
            continue
        if task.driver == "raw_exec":
            what = f'as task "{task.name}"\'s user "{task.user}"'
        else:
            what = f'inside task "{task.name}" (driver "{task.driver}")'
        r.error(base + ("Checks", ci, "Type"),
                f"a script check cannot run {what} in Yurt yet: Yurt runs it on the node as the agent's "
                "user, which would escape the task's isolation; use an http or tcp check, or a raw_exec "
                "task without user")


def _proxy_config(r: Report, config: dict[str, Any], path: tuple[Any, ...]) -> None:
    """`proxy { config { ... } }`: Yurt's proxy reads `protocol` ("tcp" or "http": the HTTP-aware
    path, mesh/l7.py); it is not Envoy, so every other key has no effect."""
    for key, value in config.items():
        if key != "protocol":
            r.warn(path + (key,), f'proxy config "{key}" {NO_EFFECT}: Yurt\'s proxy is not Envoy and reads only '
                                  '"protocol" from the job')
        elif str(value).lower() not in ("tcp", "http"):
            r.error(path + (key,), f'proxy config protocol "{value}" is not supported: Yurt\'s sidecars speak '
                                   '"tcp" or "http" (HTTP/1.1)')


def _sidecar_task(r: Report, st: SidecarTask, path: tuple[Any, ...]) -> None:
    """sidecar_task over Yurt's proxy: its config keys must be the proxy's; another driver
    replaces the proxy by a task Yurt gives no Envoy bootstrap."""
    if st.driver and st.driver != "connect-proxy":
        r.warn(path + ("Driver",),
               f'sidecar_task driver "{st.driver}" replaces Yurt\'s own proxy, and Yurt writes no Envoy '
               "bootstrap for it: the mesh will not work through this task; remove driver to keep "
               "Yurt's proxy")
        return
    for key in st.config or {}:
        if key not in CONNECT_PROXY_KEYS:
            r.warn(path + ("Config", key),
                   f'sidecar_task config "{key}" {NO_EFFECT}: the sidecar is Yurt\'s own proxy (driver '
                   f'"connect-proxy"), which reads {", ".join(CONNECT_PROXY_KEYS[5:])}')


def _find(value: Any, pattern: tuple[str, ...], at: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) of the document that matches the pattern."""
    if not pattern:
        yield at, value
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _find(item, rest, at + (i,))
    elif isinstance(value, dict) and head in value:
        yield from _find(value[head], rest, at + (head,))


def _bind(pattern: tuple[str, ...], path: tuple[Any, ...]) -> tuple[Any, ...]:
    """The pattern with its "*" replaced by the list indices of `path`, in order."""
    indices = iter(p for p in path if isinstance(p, int))
    return tuple(next(indices, 0) if part == "*" else part for part in pattern)


def _value(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        if isinstance(part, int):
            doc = doc[part] if isinstance(doc, list) and 0 <= part < len(doc) else None
        else:
            doc = doc.get(part) if isinstance(doc, dict) else None
    return doc
