"""Transparent proxy: the group's outbound TCP goes to its sidecar, its DNS to the agent.

For a group whose sidecar has `transparent_proxy {}` (Nomad's block), this hook writes, in the
allocation's namespace, nat rules shaped like Consul's `sdk/iptables` (chain names YURT_*):

    OUTPUT -p udp --dport 53 -j YURT_DNS_REDIRECT        (unless no_dns)
    OUTPUT -p tcp --dport 53 -j YURT_DNS_REDIRECT
    YURT_DNS_REDIRECT -p udp|tcp -j REDIRECT --to-ports 53      the agent's DNS, in the namespace
    OUTPUT -p tcp -j YURT_PROXY_OUTPUT
    YURT_PROXY_OUTPUT -m mark --mark 0x5955 -j RETURN    the sidecar's own connections
    YURT_PROXY_OUTPUT -o lo -j RETURN                    loopback and the namespace's own address
    YURT_PROXY_OUTPUT -p tcp --dport P -j RETURN         exclude_outbound_ports
    YURT_PROXY_OUTPUT -d CIDR -j RETURN                  exclude_outbound_cidrs
    YURT_PROXY_OUTPUT -m owner --uid-owner U -j RETURN   exclude_uids (and uid, when set)
    YURT_PROXY_OUTPUT -j YURT_PROXY_REDIRECT
    YURT_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports <outbound_port>   the sidecar's outbound listener

    PREROUTING -p tcp -j YURT_PROXY_INBOUND
    YURT_PROXY_INBOUND -p tcp --dport P -j RETURN        every other open port: metrics, mapped
                                                         ports, exclude_inbound_ports
    YURT_PROXY_INBOUND -p tcp -j YURT_PROXY_IN_REDIRECT
    YURT_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports <the sidecar's public port>

The sidecar is told apart by the socket mark it puts on everything it dials (`MARK`, the same
number as `yurt.mesh.transparent.MARK`), not by its uid as Consul's Envoy is: Yurt's sidecar
runs as the agent's user, like a raw_exec task. Inbound, a new connection from outside to the
app's port (which the mesh-only firewall would refuse) reaches the sidecar's public listener
instead, so it must be mTLS; `exclude_inbound_ports` are opened in the mesh-only firewall
(`mesh_inbound.alloc_open_ports`) and reach the app directly, as Consul's do.

DNS (unless `no_dns`): the agent serves its DNS on 127.0.0.1:53 inside the namespace (sockets
made by a thread that joined it, served by the agent: `DNSAttach`), the namespace's
resolv.conf says `nameserver 127.0.0.1`, and port 53 is redirected there, so a raw_exec task,
which reads the host's resolv.conf, is answered by it too. Names outside the mesh are passed on
to the agent's recursors (else the host's resolvers).
"""

from __future__ import annotations

import logging
import subprocess
from typing import Protocol

from yurt.structs import Allocation, ConsulTransparentProxy, Service, TaskGroup

from ..alloc_hooks import AllocHook, AllocHookContext
from . import netns
from .iptables import IptablesError, binary

log = logging.getLogger("yurt.client.network")

MARK = 0x5955                 # yurt.mesh.transparent.MARK: the sidecar's own sockets
DEFAULT_OUTBOUND_PORT = 15001
OUTPUT_CHAIN = "YURT_PROXY_OUTPUT"
REDIRECT_CHAIN = "YURT_PROXY_REDIRECT"
DNS_CHAIN = "YURT_DNS_REDIRECT"
INBOUND_CHAIN = "YURT_PROXY_INBOUND"
IN_REDIRECT_CHAIN = "YURT_PROXY_IN_REDIRECT"
RESOLV_CONF = "nameserver 127.0.0.1\noptions ndots:1\n"


class DNSAttach(Protocol):
    """The agent's DNS server, served inside an allocation's namespace."""

    def attach(self, alloc_id: str, netns_path: str) -> None: ...

    def detach(self, alloc_id: str) -> None: ...


def transparent_proxy(group: TaskGroup) -> ConsulTransparentProxy | None:
    for svc in group.services or []:
        connect = svc.connect
        sidecar = connect.sidecar_service if connect is not None else None
        proxy = sidecar.proxy if sidecar is not None else None
        if proxy is not None and proxy.transparent_proxy is not None:
            return proxy.transparent_proxy
    return None


def _tproxy_service(group: TaskGroup) -> Service | None:
    for svc in group.services or []:
        connect = svc.connect
        sidecar = connect.sidecar_service if connect is not None else None
        if sidecar is not None and sidecar.proxy is not None and sidecar.proxy.transparent_proxy is not None:
            return svc
    return None


def excluded_inbound(alloc: Allocation) -> list[int]:
    """`exclude_inbound_ports` as ports inside the namespace (numbers; a static port label: its
    `to`, else its number); the mesh-only firewall opens them, the inbound redirect skips them."""
    group = alloc.job.group(alloc.task_group) if alloc.job is not None else None
    tp = transparent_proxy(group) if group is not None else None
    if tp is None:
        return []
    ports = {p.label: p for p in alloc.allocated_resources.shared.ports}
    out = set()
    for entry in tp.exclude_inbound_ports or []:
        if entry.isdigit():
            out.add(int(entry))
        elif entry in ports:
            p = ports[entry]
            out.add(p.to if p.to > 0 else p.value)
    return sorted(out)


def inbound_ports(alloc: Allocation, group: TaskGroup) -> tuple[int, list[int]] | None:
    """(the sidecar's public port in the namespace, the ports not redirected to it: every other
    port the mesh-only firewall opens, `exclude_inbound_ports` included); None without one."""
    from .mesh_inbound import alloc_open_ports
    svc = _tproxy_service(group)
    if svc is None or svc.connect is None or svc.connect.sidecar_service is None:
        return None
    label = svc.connect.sidecar_service.port or f"connect-proxy-{svc.name}"
    public = next((p for p in alloc.allocated_resources.shared.ports if p.label == label), None)
    if public is None or not public.value:
        return None
    port = public.to if public.to > 0 else public.value
    return port, [p for p in alloc_open_ports(alloc) if p != port]


def nat_rules(tp: ConsulTransparentProxy, dns: bool,
              inbound: tuple[int, list[int]] | None = None) -> list[list[str]]:
    """The nat table's commands (arguments after `iptables -w -t nat`), in order."""
    out: list[list[str]] = [["-N", OUTPUT_CHAIN], ["-N", REDIRECT_CHAIN]]
    if inbound is not None:   # new inbound TCP to any other port goes to the sidecar's public listener
        public, excluded = inbound
        out += [["-N", INBOUND_CHAIN], ["-N", IN_REDIRECT_CHAIN],
                ["-A", IN_REDIRECT_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(public)]]
        for skip in excluded:
            out.append(["-A", INBOUND_CHAIN, "-p", "tcp", "--dport", str(skip), "-j", "RETURN"])
        out.append(["-A", INBOUND_CHAIN, "-p", "tcp", "-j", IN_REDIRECT_CHAIN])
        out.append(["-A", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN])
    port = str(tp.outbound_port or DEFAULT_OUTBOUND_PORT)
    out.append(["-A", REDIRECT_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port])
    if dns:
        out.append(["-N", DNS_CHAIN])
        for proto in ("udp", "tcp"):
            out.append(["-A", DNS_CHAIN, "-p", proto, "-j", "REDIRECT", "--to-ports", "53"])
            out.append(["-A", "OUTPUT", "-p", proto, "--dport", "53", "-j", DNS_CHAIN])
    out.append(["-A", OUTPUT_CHAIN, "-m", "mark", "--mark", hex(MARK), "-j", "RETURN"])
    out.append(["-A", OUTPUT_CHAIN, "-o", "lo", "-j", "RETURN"])
    for p in tp.exclude_outbound_ports or []:
        out.append(["-A", OUTPUT_CHAIN, "-p", "tcp", "--dport", str(p), "-j", "RETURN"])
    for cidr in tp.exclude_outbound_cidrs or []:
        out.append(["-A", OUTPUT_CHAIN, "-d", cidr, "-j", "RETURN"])
    for uid in [*(tp.exclude_uids or []), *([tp.uid] if tp.uid else [])]:
        out.append(["-A", OUTPUT_CHAIN, "-m", "owner", "--uid-owner", str(uid), "-j", "RETURN"])
    out.append(["-A", OUTPUT_CHAIN, "-j", REDIRECT_CHAIN])
    out.append(["-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN])
    return out


def apply(netns_name: str, tp: ConsulTransparentProxy, dns: bool,
          inbound: tuple[int, list[int]] | None = None) -> None:
    """Write the rules in the namespace (once: a namespace found again after an agent restart
    that already has the chain keeps its rules)."""
    exe = binary("iptables")
    if exe is None:
        raise IptablesError("iptables is not installed: apt-get install iptables")

    def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", netns_name, exe, "-w", "-t", "nat", *args],
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise IptablesError(f"iptables -t nat {' '.join(args)} in namespace {netns_name}: "
                                f"{proc.stderr.strip()}")
        return proc

    if ipt("-S", OUTPUT_CHAIN, check=False).returncode == 0:
        return
    for rule in nat_rules(tp, dns, inbound):
        ipt(*rule)


class TransparentProxyHook(AllocHook):
    """After the mesh inbound hook: the nat rules, and the agent's DNS in the namespace."""

    name = "transparent_proxy"

    def __init__(self, dns: DNSAttach | None = None) -> None:
        self.dns = dns

    def prerun(self, ctx: AllocHookContext) -> None:
        tp = transparent_proxy(ctx.group)
        path = ctx.resources.netns
        if tp is None or not path:
            return
        name = path.rsplit("/", 1)[-1]
        with_dns = not tp.no_dns and self.dns is not None
        apply(name, tp, with_dns, inbound_ports(ctx.alloc, ctx.group))
        if with_dns:
            assert self.dns is not None
            self.dns.attach(ctx.alloc_id, path)
            netns.write_resolv_conf(name, RESOLV_CONF)
            ctx.resources.resolv_conf = RESOLV_CONF
        log.info("alloc %s: transparent proxy: outbound TCP to port %d%s", ctx.alloc_id[:8],
                 tp.outbound_port or DEFAULT_OUTBOUND_PORT, ", DNS from the agent" if with_dns else "")

    def postrun(self, ctx: AllocHookContext) -> None:
        if self.dns is not None:
            self.dns.detach(ctx.alloc_id)

    def destroy(self, ctx: AllocHookContext) -> None:
        self.postrun(ctx)
