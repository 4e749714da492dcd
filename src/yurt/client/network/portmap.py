"""Host port mappings of a group network, and the check that nothing else holds those ports."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from yurt.structs import Allocation


class HostPortInUse(Exception):
    pass


def port_mappings(alloc: Allocation, *, gateway: str = "", loopback_too: bool = False) -> list[dict[str, Any]]:
    """The portmap plugin's ``portMappings``, as Nomad builds them.

    For every allocated port (label, host value V, to T): T < 1 means T = V; one tcp and one udp
    mapping ``{hostPort V, containerPort T, protocol, hostIP}``. When the host IP is a loopback
    address and ``gateway`` is given, the port is also mapped on the bridge gateway address,
    so the other allocations of this node reach it there (127.0.0.1 is their own loopback).
    ``loopback_too`` (a -dev-connect node, whose address is its public one) maps every port on
    127.0.0.1 as well, so ``localhost:PORT`` works on the machine itself.
    """
    out: list[dict[str, Any]] = []
    for p in alloc.allocated_resources.shared.ports:
        if p.value <= 0:
            continue
        to = p.to if p.to >= 1 else p.value
        host_ips = [p.host_ip] if p.host_ip else [""]
        if gateway and p.host_ip and _is_loopback(p.host_ip):
            host_ips.append(gateway)
        elif loopback_too and p.host_ip:
            host_ips.append("127.0.0.1")
        for host_ip in host_ips:
            for proto in ("tcp", "udp"):
                mapping: dict[str, Any] = {"hostPort": p.value, "containerPort": to, "protocol": proto}
                if host_ip:
                    mapping["hostIP"] = host_ip
                out.append(mapping)
    return out


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def static_labels(alloc: Allocation) -> set[str]:
    group = alloc.job.group(alloc.task_group) if alloc.job else None
    network = group.network if group else None
    return {p.label for p in (network.reserved_ports or [])} if network else set()


def _listened(address: str, port: int) -> bool:
    """True when a listening TCP socket holds ``address:port`` (TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        return False
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        s.close()


def check_host_ports_free(alloc: Allocation) -> None:
    """Fail, naming the port, when another program listens on one of the allocation's host ports.

    Once mapped, traffic to the port goes to the allocation and that program silently stops
    getting it (or the other way round), which is much harder to find later.
    """
    static = static_labels(alloc)
    for p in alloc.allocated_resources.shared.ports:
        if p.value <= 0:
            continue
        addresses = dict.fromkeys([p.host_ip or "0.0.0.0", "0.0.0.0"])
        if any(_listened(a, p.value) for a in addresses):
            if p.label in static:
                raise HostPortInUse(
                    f"host port {p.value} is already in use on this node (something else listens on it): "
                    f"choose another static port or stop that program")
            raise HostPortInUse(
                f'host port {p.value} (dynamic port "{p.label}") is already in use on this node '
                f"(something else listens on it): stop that program or run the allocation again")
