"""Mesh-only inbound: in a group with a Connect sidecar, only the mesh gets in.

Nomad and Consul leave the application's port open on the allocation's address, so anything
on the bridge can walk around the mesh (and its intentions). Yurt closes the namespace's
INPUT to everything but loopback, replies, the sidecar's public port and the ports the job
maps explicitly (`port "x" { to = ... }`), so count-api is reachable only through its proxy.
The rules live in the allocation's own namespace and go with it.

The same rules are written for IPv6 (ip6tables, ICMPv6 accepted for neighbour discovery): a
namespace's interfaces have IPv6 link-local addresses even when the bridge hands out IPv4 only,
and an app bound to `::` would answer on them. Turning IPv6 off in the namespace instead would
break apps that bind or dial `::1`, and would not cover a CNI network that does route IPv6.
"""

from __future__ import annotations

import logging
import subprocess

from yurt.structs import Allocation

from ..alloc_hooks import AllocHook, AllocHookContext
from .iptables import IptablesError, binary

log = logging.getLogger("yurt.client.network")

CHAIN = "YURT-MESH-IN"


def open_ports(ctx: AllocHookContext) -> list[int]:
    """The ports inside the namespace that may be reached from outside it."""
    return alloc_open_ports(ctx.alloc)


def alloc_open_ports(alloc: Allocation) -> list[int]:
    """`open_ports` of an allocation (`yurt mesh explain` checks the rules written from them)."""
    ports = {p.label: p for p in alloc.allocated_resources.shared.ports}
    from .tproxy import excluded_inbound   # a transparent proxy's exclude_inbound_ports
    return sorted({(p.to if p.to > 0 else p.value) for p in ports.values() if p.value} | set(excluded_inbound(alloc)))


def has_sidecar(ctx: AllocHookContext) -> bool:
    return any(s.has_sidecar for s in ctx.group.services or [])


def rules(ports: list[int], ipv6: bool = False) -> list[list[str]]:
    out = [["-i", "lo", "-j", "ACCEPT"],
           ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
           ["-p", "ipv6-icmp" if ipv6 else "icmp", "-j", "ACCEPT"]]
    for port in ports:
        out.append(["-p", "tcp", "--dport", str(port), "-j", "ACCEPT"])
        out.append(["-p", "udp", "--dport", str(port), "-j", "ACCEPT"])
    out.append(["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
    out.append(["-j", "REJECT"])
    return out


def apply(netns_name: str, ports: list[int]) -> None:
    """(Re)write the namespace's inbound rules, IPv4 and IPv6; idempotent."""
    for name, ipv6 in (("iptables", False), ("ip6tables", True)):
        exe = binary(name)
        if exe is None:
            raise IptablesError(f"{name} is not installed: apt-get install iptables")
        _apply(exe, name, netns_name, rules(ports, ipv6))


def _apply(exe: str, name: str, netns_name: str, chain_rules: list[list[str]]) -> None:
    def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", netns_name, exe, "-w", *args],
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise IptablesError(f"{name} {' '.join(args)} in namespace {netns_name}: {proc.stderr.strip()}")
        return proc

    if ipt("-S", CHAIN, check=False).returncode != 0:
        ipt("-N", CHAIN)
    ipt("-F", CHAIN)
    for rule in chain_rules:
        ipt("-A", CHAIN, *rule)
    if ipt("-C", "INPUT", "-j", CHAIN, check=False).returncode != 0:
        ipt("-I", "INPUT", "1", "-j", CHAIN)


class MeshInboundHook(AllocHook):
    """After the network hook: close the namespace to all but the mesh and the mapped ports."""

    name = "mesh_inbound"

    def prerun(self, ctx: AllocHookContext) -> None:
        netns = ctx.resources.netns
        if not netns or not has_sidecar(ctx):
            return
        ports = open_ports(ctx)
        apply(netns.rsplit("/", 1)[-1], ports)
        log.info("alloc %s: inbound limited to ports %s (mesh-only)", ctx.alloc_id[:8],
                 ", ".join(map(str, ports)) or "none")
