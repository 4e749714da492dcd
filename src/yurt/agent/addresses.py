"""Which addresses an agent advertises, as Nomad picks them.

- The node address (``unique.network.ip-address``: host ports are mapped on it, services are
  registered at it) is the first IPv4 address of ``client { network_interface }``; without it,
  the address the agent binds when that is one address; for a wildcard bind (``0.0.0.0``), the
  interface of the default route (a ``-dev-connect`` agent binds 0.0.0.0, so that is its address);
  a ``-dev`` agent bound to loopback uses 127.0.0.1, as does a dev agent with no default route.
- The HTTP address other hosts use (a node's ``HTTPAddr``, what servers and clients dial) is
  ``advertise { http }``, else the bound address, else (wildcard) the node address.
- ``client { host_network "name" { cidr | interface } }`` names more addresses that ports can
  ask for with ``port "x" { host_network = "name" }``.

An agent never advertises 0.0.0.0, nor loopback after a wildcard bind, unless it is ``-dev``:
other hosts could not reach it there, and the failure would only show much later as
"connection refused" far from its cause.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass

from yurt.errors import ConfigError
from yurt.gotemplate.sockaddr import SBIN, default_route_interface

WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class HostNetwork:
    """``client { host_network "name" { ... } }``."""

    name: str
    cidr: str = ""
    interface: str = ""
    reserved_ports: str = ""


def interfaces() -> dict[str, list[ipaddress.IPv4Interface]]:
    """name -> its IPv4 addresses (with prefix), in the kernel's order, for this network namespace."""
    exe = shutil.which("ip") or shutil.which("ip", path=SBIN)
    if exe is None:
        raise ConfigError("the ip command is not installed, so no interface address can be found: "
                          "apt-get install iproute2, or set advertise { http } and bind_addr")
    proc = subprocess.run([exe, "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=30)
    try:
        links = json.loads(proc.stdout or "[]")
    except ValueError:
        links = []
    out: dict[str, list[ipaddress.IPv4Interface]] = {}
    for link in links:
        addrs = [ipaddress.IPv4Interface(f"{a['local']}/{a.get('prefixlen', 32)}")
                 for a in link.get("addr_info") or [] if a.get("family") == "inet" and a.get("local")]
        out[str(link.get("ifname", ""))] = addrs
    return out


def interface_address(name: str, setting: str, table: dict[str, list[ipaddress.IPv4Interface]] | None = None
                      ) -> str:
    table = interfaces() if table is None else table
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(f'{setting} = "{name}": no such network interface here (interfaces: {known})')
    if not table[name]:
        raise ConfigError(f'{setting} = "{name}": the interface has no IPv4 address; give it one, or '
                          "choose another interface")
    return str(table[name][0].ip)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def node_address(*, bind: str, network_interface: str, dev: bool,
                 table: dict[str, list[ipaddress.IPv4Interface]] | None = None) -> str:
    """The node's address (see the module's doc). Raises ConfigError naming the setting to set."""
    if network_interface:
        return interface_address(network_interface, "client.network_interface", table)
    if bind not in WILDCARDS:
        return bind
    iface = default_route_interface()
    if not iface:
        if dev:
            return "127.0.0.1"
        raise ConfigError(f'bind_addr is "{bind or "0.0.0.0"}" and this host has no default route, so no '
                          "address can be advertised to other hosts: set client { network_interface = "
                          '"eth0" } (or advertise { http = "ADDRESS" }), or bind one address with -bind')
    return interface_address(iface, f"the default route's interface ({iface}): network_interface", table)


def http_address(*, advertise: str, bind: str, node_ip: str, dev: bool) -> str:
    """The host other agents reach this agent's HTTP API at."""
    if advertise:
        if advertise in WILDCARDS:
            raise ConfigError(f'advertise {{ http = "{advertise}" }}: an agent cannot be reached at a '
                              "wildcard address; advertise the address other hosts should dial")
        return advertise
    if bind not in WILDCARDS:
        return bind
    if is_loopback(node_ip) and not dev:
        raise ConfigError(f'bind_addr is "{bind or "0.0.0.0"}" but the only address found is loopback '
                          f"({node_ip}): set advertise {{ http = \"ADDRESS\" }} or client {{ network_interface }}")
    return node_ip


def host_network_addresses(networks: list[HostNetwork],
                           table: dict[str, list[ipaddress.IPv4Interface]] | None = None) -> dict[str, str]:
    """name -> the address of each ``host_network``: its interface's address (within ``cidr`` when
    both are given), else the first address of any interface within ``cidr``."""
    if not networks:
        return {}
    table = interfaces() if table is None else table
    out: dict[str, str] = {}
    for hn in networks:
        setting = f'client.host_network "{hn.name}"'
        net = None
        if hn.cidr:
            try:
                net = ipaddress.IPv4Network(hn.cidr, strict=False)
            except ValueError:
                raise ConfigError(f'{setting}: cidr "{hn.cidr}" is not an IPv4 network like "10.0.0.0/24"') from None
        if not hn.cidr and not hn.interface:
            raise ConfigError(f"{setting}: give it a cidr or an interface")
        candidates: list[ipaddress.IPv4Interface] = []
        if hn.interface:
            if hn.interface not in table:
                raise ConfigError(f'{setting}: interface "{hn.interface}" does not exist here '
                                  f'(interfaces: {", ".join(sorted(table)) or "none"})')
            candidates = list(table[hn.interface])
        else:
            candidates = [a for addrs in table.values() for a in addrs]
        found = [a for a in candidates if net is None or a.ip in net]
        if not found:
            where = f'interface "{hn.interface}"' if hn.interface else "any interface"
            raise ConfigError(f"{setting}: {where} has no address" + (f" in {hn.cidr}" if net else "")
                              + ": fix the cidr or the interface")
        out[hn.name] = str(found[0].ip)
    return out
