"""Rules for Consul Connect: connect, sidecar_service, proxy, upstreams, expose, sidecar_task,
and the connect-proxy tasks (Nomad's job_endpoint_hook_connect.go groupConnectValidate + structs)."""

from __future__ import annotations

import ipaddress
import re

from yurt.structs import ConsulProxy, Job, Service, SidecarTask, TaskGroup

from yurt.structs.gateway import INGRESS, MESH, gateway_entry, gateway_kind

from .errors import Path
from .validate_common import (MAX_PORT, Report, dur, group_mode, group_ports, is_group_isolated,
                              is_known_mode, is_number)
from .validate_policies import validate_logs, validate_resources

MESH_GATEWAY_MODES = ("", "local", "remote", "none")
EXPOSE_PROTOCOLS = ("", "http", "http2", "grpc")


def connect_services(group: TaskGroup) -> list[tuple[int, Service]]:
    return [(i, s) for i, s in enumerate(group.services or []) if s.connect is not None]


def _sidecar_proxy(s: Service) -> ConsulProxy | None:
    """The proxy block of a connect service's sidecar_service, if both are written."""
    sidecar = s.connect.sidecar_service if s.connect is not None else None
    return sidecar.proxy if sidecar is not None else None


def validate_connect(r: Report, job: Job, group: TaskGroup, s: Service, path: Path,
                     group_level: bool) -> None:
    """One service's connect block; group-wide rules are in validate_group_connect."""
    c = s.connect
    cpath = path + ("Connect",)
    if c is None:
        return
    if not group_level:
        r.error(cpath, 'connect is only allowed in group services: move this service block out of '
                       'the task into the group')
        return
    if s.provider == "nomad":
        r.error(path + ("Provider",), 'connect needs the consul service provider: remove '
                                      'provider = "nomad" or the connect block')
    kinds = [k for k, on in (("native", c.native), ("sidecar_service", c.sidecar_service is not None),
                             ("gateway", c.gateway is not None)) if on]
    if not kinds:
        r.error(cpath, 'connect block is empty: add sidecar_service {}, native = true or a gateway block')
    elif len(kinds) > 1:
        r.error(cpath, f'connect has {" and ".join(kinds)}, but exactly one is allowed: keep one of them')
    if c.sidecar_task is not None and c.sidecar_service is None:
        r.error(cpath + ("SidecarTask",), 'sidecar_task only applies to a sidecar_service: '
                                          'add sidecar_service {} or remove sidecar_task')
    if c.sidecar_service is not None:
        if s.name != s.name.lower():
            r.error(path + ("Name",), f'connect service name "{s.name}" must be lowercase: '
                                      f'rename it "{s.name.lower()}"')
        ss = c.sidecar_service
        if ss.proxy is not None:
            _validate_proxy(r, group, ss.proxy, cpath + ("SidecarService", "Proxy"))
        if c.sidecar_task is not None:
            _validate_sidecar_task(r, c.sidecar_task, cpath + ("SidecarTask",))
    if c.native:
        tasks = group.tasks or []
        if not s.task_name and len(tasks) != 1:
            r.error(path + ("TaskName",), f'connect native service "{s.name}" needs to know which '
                                          'task implements it: set task = "<task name>" on the service')
        if not s.port_label:
            r.error(path + ("PortLabel",), f'connect native service "{s.name}" needs a port: '
                                           'set port on the service')
    if c.gateway is not None:
        _validate_gateway(r, group, s, c.gateway, cpath + ("Gateway",), path)


def _validate_gateway(r: Report, group: TaskGroup, s: Service, gateway: dict, gpath: Path, path: Path) -> None:
    """The gateway block as Consul's config entry (structs/gateway.py): its problems, and the
    listeners' ports against the group's network."""
    kind = gateway_kind(gateway)
    if kind == MESH:
        if not s.port_label:
            r.error(path + ("PortLabel",), 'a mesh gateway needs the port of its WAN listener: '
                                           'set port on the service')
        r.warn(gpath + ("mesh",), "mesh gateway has no effect yet in Yurt: no mesh gateway proxy is "
                                  "started (ingress and terminating gateways are)")
        return
    entry, problems = gateway_entry(s.name, gateway)
    for sub, message, is_error in problems:
        (r.error if is_error else r.warn)(gpath + tuple(sub), message)
    if s.name != s.name.lower():
        r.error(path + ("Name",), f'gateway service name "{s.name}" must be lowercase: '
                                  f'rename it "{s.name.lower()}"')
    if kind != INGRESS:
        return
    mapped = {(p.to if p.to > 0 else p.value): label for label, p in group_ports(group).items()}
    static = {p.value for p in group_ports(group).values() if p.value}
    isolated = is_group_isolated(group_mode(group))
    others = {int(o.port_label): f'service "{o.name}"' for o in group.services or []
              if o is not s and is_number(o.port_label)}
    for li, lst in enumerate(entry.get("Listeners") or []):
        port = lst["Port"]
        if not port:
            continue
        lpath = gpath + ("ingress", 0, "listener", li, "port")
        if port in others:
            r.error(lpath, f"listener port {port} is already used by {others[port]} in group "
                           f'"{group.name}": give the listener another port')
        if group_mode(group) == "host" and port not in static:
            r.warn(lpath, f"listener port {port} binds on the node itself (network mode host), but the group "
                          f"reserves no such port, so the scheduler may place something else on it: add "
                          f"network {{ port \"ingress-{port}\" {{ static = {port} }} }}")
        if isolated and port not in mapped:
            r.warn(lpath, f"listener port {port} is not mapped to the host by the group network, so only "
                          f"the group reaches it: add network {{ port \"ingress-{port}\" {{ static = {port} "
                          f"to = {port} }} }} (or any host port with to = {port})")


def _validate_proxy(r: Report, group: TaskGroup, proxy: ConsulProxy, path: Path) -> None:
    if not 0 <= proxy.local_service_port <= MAX_PORT:
        r.error(path + ("LocalServicePort",), f'local_service_port {proxy.local_service_port} is '
                                              f'out of range: use 1 to {MAX_PORT}')
    for ui, u in enumerate(proxy.upstreams or []):
        upath = path + ("Upstreams", ui)
        if not u.destination_name:
            r.error(upath + ("DestinationName",), 'upstream has no destination_name: set it to the '
                                                  'name of the service to reach')
        if not u.local_bind_socket_path and not 1 <= u.local_bind_port <= MAX_PORT:
            what = "is missing" if u.local_bind_port == 0 else f"{u.local_bind_port} is out of range"
            r.error(upath + ("LocalBindPort",), f'upstream local_bind_port {what}: set the port '
                                                f'the task will dial on 127.0.0.1 (1 to {MAX_PORT})')
        if u.mesh_gateway is not None and u.mesh_gateway.mode not in MESH_GATEWAY_MODES:
            r.error(upath + ("MeshGateway", "Mode"), f'mesh_gateway mode "{u.mesh_gateway.mode}" is '
                                                     'not known: use local, remote or none')
    if proxy.expose is not None:
        labels = group_ports(group)
        for pi, p in enumerate(proxy.expose.paths or []):
            ppath = path + ("Expose", "Paths", pi)
            if not p.path.startswith("/"):
                r.error(ppath + ("Path",), f'expose path "{p.path}" must start with "/": '
                                           f'write "/{p.path}"')
            if p.protocol not in EXPOSE_PROTOCOLS:
                r.error(ppath + ("Protocol",), f'expose protocol "{p.protocol}" is not known: '
                                               'use http, http2 or grpc')
            elif p.protocol in ("http2", "grpc"):
                r.error(ppath + ("Protocol",), f'expose protocol "{p.protocol}" is not served by Yurt\'s '
                                               'sidecar yet (its exposed paths speak HTTP/1.1): use http')
            if not 1 <= p.local_path_port <= MAX_PORT:
                r.error(ppath + ("LocalPathPort",), 'expose local_path_port must be the port the '
                                                    f'service listens on (1 to {MAX_PORT})')
            if not p.listener_port:
                r.error(ppath + ("ListenerPort",), 'expose listener_port is missing: name a port '
                                                   'label of the group network')
            elif p.listener_port not in labels:
                r.error(ppath + ("ListenerPort",), f'listener_port "{p.listener_port}" is not a port '
                                                   f'label of group "{group.name}": declare it with '
                                                   f'network {{ port "{p.listener_port}" {{}} }}')
    tp = proxy.transparent_proxy
    if tp is not None:
        tpath = path + ("TransparentProxy",)
        if not 0 <= tp.outbound_port <= MAX_PORT:
            r.error(tpath + ("OutboundPort",), f'outbound_port {tp.outbound_port} is out of range: '
                                               f'use 1 to {MAX_PORT}')
        static = {p.label for p in group_ports(group).values() if p.value}
        for i, entry in enumerate(tp.exclude_inbound_ports or []):
            if not is_number(entry) and entry not in static:
                r.error(tpath + ("ExcludeInboundPorts", i),
                        f'exclude_inbound_ports entry "{entry}" is neither a number nor a static '
                        'port label of the group: use a number or a port with static = ...')
        for i, port in enumerate(tp.exclude_outbound_ports or []):
            if not 1 <= port <= MAX_PORT:
                r.error(tpath + ("ExcludeOutboundPorts", i),
                        f'exclude_outbound_ports entry {port} is not a port: use 1 to {MAX_PORT}')
        for i, cidr in enumerate(tp.exclude_outbound_cidrs or []):
            try:
                net4 = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                net4 = None
            if not isinstance(net4, ipaddress.IPv4Network):
                r.error(tpath + ("ExcludeOutboundCIDRs", i),
                        f'exclude_outbound_cidrs entry "{cidr}" is not an IPv4 CIDR: write it like '
                        '"10.0.0.0/8" (or "10.1.2.3/32" for one address)')
        for i, uid in enumerate([*(tp.exclude_uids or [])]):
            if not _UID.match(uid):
                r.error(tpath + ("ExcludeUIDs", i),
                        f'exclude_uids entry "{uid}" is not a user ID: write a number like "1000" '
                        'or a range like "1000-1999"')
        if tp.uid and not _UID.match(tp.uid):
            r.error(tpath + ("UID",), f'uid "{tp.uid}" is not a user ID: write a number like "101"')
        net = group.network
        if net is not None and net.dns is not None and not tp.no_dns:
            r.error(group_path_of(path) + ("Networks", 0, "DNS"),
                    'a network dns block cannot be used with transparent_proxy: remove dns or '
                    'set no_dns = true in transparent_proxy')


_UID = re.compile(r"^\d+(-\d+)?$")


def group_path_of(path: Path) -> Path:
    return tuple(path[:2])


def _validate_sidecar_task(r: Report, t: SidecarTask, path: Path) -> None:
    if t.kill_timeout is not None and t.kill_timeout < 0:
        r.error(path + ("KillTimeout",), f'kill_timeout {dur(t.kill_timeout)} is negative: use 0 or more')
    if t.shutdown_delay is not None and t.shutdown_delay < 0:
        r.error(path + ("ShutdownDelay",), f'shutdown_delay {dur(t.shutdown_delay)} is negative: '
                                           'use 0 or more')
    if t.resources is not None:
        validate_resources(r, t.resources, path + ("Resources",))
    if t.log_config is not None:
        validate_logs(r, t.log_config, path + ("LogConfig",), None)


def validate_group_connect(r: Report, job: Job, gi: int, group: TaskGroup) -> None:
    """Connect rules that concern the whole group: network, names, upstream listeners, tasks."""
    base = ("TaskGroups", gi)
    services = connect_services(group)
    sidecars = [(i, s) for i, s in services if s.has_sidecar]
    gateways = [(i, s) for i, s in services if s.connect is not None and s.connect.gateway is not None]
    nets = group.networks or []
    if sidecars or gateways:
        first = sidecars[0] if sidecars else gateways[0]
        what = f'connect service "{first[1].name}"'
        if len(nets) != 1:
            r.error(base + ("Networks",), f'{what} needs exactly one network in group "{group.name}" '
                                          f'(found {len(nets)}): add network {{ mode = "bridge" }}')
        else:
            mode = nets[0].effective_mode
            ok = is_group_isolated(mode) or (not sidecars and mode == "host")
            if not ok and is_known_mode(mode):
                r.error(base + ("Networks", 0, "Mode"),
                        f'network mode "{mode}" cannot carry {what}: set mode = "bridge" (or "cni/<name>")')
    if sidecars and group.name != group.name.lower():
        r.error(base + ("Name",), f'group "{group.name}" has a connect sidecar, so its name must be '
                                  f'lowercase: rename it "{group.name.lower()}"')
    tproxies = [(i, s) for i, s in sidecars
                if (proxy := _sidecar_proxy(s)) is not None and proxy.transparent_proxy is not None]
    if tproxies and len(services) > 1:
        i = tproxies[0][0]
        r.error(base + ("Services", i, "Connect", "SidecarService", "Proxy", "TransparentProxy"),
                'transparent_proxy requires the group to have only one connect service: '
                'move the other connect services to their own groups')
    _validate_upstream_listeners(r, group, base, sidecars)
    _validate_proxy_tasks(r, group, base)


def _validate_upstream_listeners(r: Report, group: TaskGroup, base: Path,
                                 sidecars: list[tuple[int, Service]]) -> None:
    app_ports = _app_ports(group)
    seen: dict[str, str] = {}
    for si, s in sidecars:
        proxy = _sidecar_proxy(s)
        for ui, u in enumerate((proxy.upstreams if proxy else None) or []):
            upath = base + ("Services", si, "Connect", "SidecarService", "Proxy", "Upstreams", ui)
            if u.local_bind_socket_path:
                key, field = u.local_bind_socket_path, "LocalBindSocketPath"
            else:
                key, field = f"{u.local_bind_address or '127.0.0.1'}:{u.local_bind_port}", "LocalBindPort"
            owner = f'upstream "{u.destination_name}" of service "{s.name}"'
            if key in seen:
                r.error(upath + (field,), f'upstream listener {key} is already used by {seen[key]}: '
                                          'give each upstream its own local_bind_port')
            else:
                seen[key] = owner
            if field == "LocalBindPort" and u.local_bind_port in app_ports:
                r.warn(upath + (field,), f'upstream local_bind_port {u.local_bind_port} is also the '
                                         f'port of {app_ports[u.local_bind_port]} inside the group: '
                                         'choose another port so both can listen')


def _app_ports(group: TaskGroup) -> dict[int, str]:
    """Ports applications of the group listen on inside its namespace -> what they belong to."""
    out: dict[int, str] = {}
    labels = group_ports(group)
    for s in group.services or []:
        if is_number(s.port_label):
            out.setdefault(int(s.port_label), f'service "{s.name}"')
    for label, p in labels.items():
        inside = p.to if p.to > 0 else p.value
        if inside > 0 and is_group_isolated(group_mode(group)):
            out.setdefault(inside, f'port "{label}"')
    return out


def _validate_proxy_tasks(r: Report, group: TaskGroup, base: Path) -> None:
    """Tasks of kind connect-proxy:<service> (injected, or written by hand)."""
    for ti, t in enumerate(group.tasks or []):
        if not t.kind.startswith("connect-proxy:"):
            continue
        svc = t.kind.split(":", 1)[1]
        tpath = base + ("Tasks", ti)
        if t.services:
            r.error(tpath + ("Services",), f'connect proxy task "{t.name}" cannot have services: '
                                           'move them to the group')
        if t.leader:
            r.error(tpath + ("Leader",), f'connect proxy task "{t.name}" cannot be the leader: '
                                         'mark another task as leader')
        if not any(s.name == svc and s.has_sidecar for s in group.services or []):
            r.error(tpath + ("Kind",), f'connect proxy task "{t.name}" serves "{svc}", but group '
                                       f'"{group.name}" has no service "{svc}" with '
                                       'connect { sidecar_service {} }: add that service')
