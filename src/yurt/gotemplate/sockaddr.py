"""go-sockaddr: the templates Nomad's and Consul's agent configs take for addresses, and
consul-template's ``sockaddr`` function.

    bind_addr = "{{ GetPrivateIP }}"
    advertise { http = "{{ GetInterfaceIP \"eth0\" }}:4646" }
    client { network_interface = "{{ GetDefaultInterfaces | attr \"name\" }}" }
    {{ sockaddr "GetPrivateInterfaces | include \"type\" \"ipv4\" | attr \"address\"" }}   (a job template)

A go-sockaddr template is executed by this package's engine with go-sockaddr's functions over
this host's interface addresses (``ip -j addr show``; the default route's interface from the
kernel's table, ``/proc/net/route``):

- sources: ``GetAllInterfaces``, ``GetDefaultInterfaces``, ``GetPrivateInterfaces`` (RFC 6890,
  forwardable, up; the default interface first), ``GetPublicInterfaces`` (the same, not RFC 6890);
- strings: ``GetPrivateIP``, ``GetPrivateIPs``, ``GetPublicIP``, ``GetPublicIPs``,
  ``GetInterfaceIP "RE"``, ``GetInterfaceIPs "RE"`` (the interface's name is a regular expression);
- on a list: ``include``/``exclude SELECTOR VALUE`` (``name`` and ``address``: regular
  expressions; ``flag``/``flags``: up, down, loopback, broadcast, multicast, point-to-point,
  forwardable, unicast, several joined by ``|``; ``type``: ip, ipv4, ipv6; ``rfc``: 6890 or
  1918; ``network``: a CIDR), ``sort "KEY,..."`` (address, default, name, private, size, type;
  ``-KEY`` descending), ``attr NAME`` (of the first), ``join NAME SEP``, ``limit N``,
  ``offset N`` (negative: from the end), ``unique address|name``;
- attributes: address, name, network, netmask, mask_bits, size, type, flags, broadcast (IPv4).

go-sockaddr's ``math`` and its other RFC numbers are not read: the error names them.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gofmt import FuncError

SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# go-sockaddr's tables (rfc.go): RFC 6890's special-purpose blocks, and the blocks it calls not
# forwardable
RFC_6890 = _nets("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                 "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
                 "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
                 "::1/128", "::/128", "64:ff9b::/96", "::ffff:0:0/96", "100::/64", "2001::/16", "2001:2::/48",
                 "2001:db8::/32", "2001:10::/28", "2002::/16", "fc00::/7", "fe80::/10")
RFC_1918 = _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
NOT_FORWARDABLE = _nets("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "192.0.0.0/24", "192.0.2.0/24",
                        "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
                        "::1/128", "::/128", "::ffff:0:0/96", "2001::/23", "2001:db8::/32", "2001:10::/28",
                        "fe80::/10")
RFCS = {"6890": RFC_6890, "1918": RFC_1918}


class SockaddrError(FuncError):
    """A function's failure inside the template (reported as Go's `error calling NAME: ...`), or
    this host's addresses that cannot be read."""


@dataclass(frozen=True)
class IfAddr:
    """One address of one interface (go-sockaddr's IfAddr)."""

    name: str
    iface: IPInterface
    flags: frozenset[str]          # up, loopback, broadcast, multicast, point-to-point
    default: bool = False          # the interface of the default route

    def in_any(self, nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
        return any(self.iface.ip.version == n.version and self.iface.ip in n for n in nets)

    @property
    def forwardable(self) -> bool:
        return not self.in_any(NOT_FORWARDABLE)

    def attr(self, name: str) -> str:
        ip, net = self.iface.ip, self.iface.network
        values: dict[str, Callable[[], str]] = {
            "address": lambda: str(ip), "name": lambda: self.name, "network": lambda: str(net.network_address),
            "netmask": lambda: str(net.netmask), "mask_bits": lambda: str(net.prefixlen),
            "size": lambda: str(net.num_addresses), "type": lambda: f"IPv{ip.version}",
            "flags": lambda: "|".join(sorted(self.flags)),
            "broadcast": lambda: str(net.broadcast_address) if ip.version == 4 else "",
        }
        fn = values.get(name.lower())
        if fn is None:
            raise SockaddrError(f'unknown attribute "{name}": Yurt reads {", ".join(sorted(values))}')
        return fn()


def default_route_interface(route_table: str = "/proc/net/route") -> str:
    """The interface of the IPv4 default route with the lowest metric, "" when there is none."""
    try:
        lines = Path(route_table).read_text().splitlines()[1:]
    except OSError:
        return ""
    best: tuple[int, str] | None = None
    for line in lines:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            metric = int(cols[6]) if cols[6].isdigit() else 0
            if best is None or metric < best[0]:
                best = (metric, cols[0])
    return best[1] if best else ""


def host_addresses() -> list[IfAddr]:
    """Every address of every interface of this network namespace, in the kernel's order."""
    exe = shutil.which("ip") or shutil.which("ip", path=SBIN)
    if exe is None:
        raise SockaddrError("go-sockaddr needs the ip command to list this host's addresses: "
                            "apt-get install iproute2, or write the address")
    proc = subprocess.run([exe, "-j", "addr", "show"], capture_output=True, text=True, timeout=30)
    try:
        links = json.loads(proc.stdout or "[]")
    except ValueError:
        links = []
    default = default_route_interface()
    out: list[IfAddr] = []
    for link in links:
        raw = {str(f).upper() for f in link.get("flags") or []}
        flags = frozenset({"up"} if "UP" in raw else set()) | frozenset(
            name for flag, name in (("LOOPBACK", "loopback"), ("BROADCAST", "broadcast"),
                                    ("MULTICAST", "multicast"), ("POINTOPOINT", "point-to-point")) if flag in raw)
        name = str(link.get("ifname", ""))
        for a in link.get("addr_info") or []:
            if a.get("family") in ("inet", "inet6") and a.get("local"):
                iface = ipaddress.ip_interface(f"{a['local']}/{a.get('prefixlen', 128)}")
                out.append(IfAddr(name, iface, flags, default=bool(default) and name == default))
    return out


# -- the functions -------------------------------------------------------------------------------

def _regexp(pattern: Any, what: str) -> re.Pattern[str]:
    try:
        return re.compile(str(pattern))
    except re.error as e:
        raise SockaddrError(f'{what} "{pattern}" is not a regular expression: {e}') from None


def _matches(a: IfAddr, selector: str, value: str) -> bool:
    sel = selector.lower()
    if sel == "name":
        return bool(_regexp(value, "name").search(a.name))
    if sel == "address":
        return bool(_regexp(value, "address").search(str(a.iface.ip)))
    if sel in ("flag", "flags"):
        wanted = [f.strip().lower() for f in value.split("|") if f.strip()]
        known = {"up", "down", "loopback", "broadcast", "multicast", "point-to-point", "forwardable", "unicast"}
        for f in wanted:
            if f not in known:
                raise SockaddrError(f'unknown flag "{f}": Yurt reads {", ".join(sorted(known))}')
        have = set(a.flags) | ({"forwardable"} if a.forwardable else set()) \
            | ({"down"} if "up" not in a.flags else set()) | ({"unicast"} if not a.iface.ip.is_multicast else set())
        return all(f in have for f in wanted)
    if sel == "type":
        t = value.lower()
        if t not in ("ip", "ipv4", "ipv6"):
            raise SockaddrError(f'unknown type "{value}": write ip, ipv4 or ipv6')
        return t == "ip" or t == f"ipv{a.iface.ip.version}"
    if sel == "rfc":
        if value not in RFCS:
            raise SockaddrError(f'RFC "{value}" is not one Yurt knows: it reads {", ".join(sorted(RFCS))}')
        return a.in_any(RFCS[value])
    if sel == "network":
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise SockaddrError(f'network "{value}" is not a CIDR like "10.0.0.0/8"') from None
        return a.iface.ip.version == net.version and a.iface.ip in net
    raise SockaddrError(f'unknown selector "{selector}": Yurt reads address, flag, name, network, rfc, type')


def _ifaddrs(v: Any, fn: str) -> list[IfAddr]:
    if isinstance(v, IfAddr):
        return [v]
    if isinstance(v, list) and all(isinstance(a, IfAddr) for a in v):
        return v
    raise SockaddrError(f"{fn} works on interface addresses (GetAllInterfaces ...), not {v!r}")


_SORT_KEYS: dict[str, Callable[[IfAddr], Any]] = {
    "address": lambda a: (a.iface.ip.version, int(a.iface.ip)),
    "default": lambda a: not a.default,                 # the default interface first
    "name": lambda a: a.name,
    "private": lambda a: not a.in_any(RFC_6890),        # private first
    "size": lambda a: -a.iface.network.num_addresses,   # the largest network first
    "type": lambda a: a.iface.ip.version,               # IPv4 first
}


def sort_by(keys: str, addrs: list[IfAddr]) -> list[IfAddr]:
    out = list(addrs)
    clauses = [c.strip() for c in str(keys).split(",") if c.strip()]
    for clause in reversed(clauses):   # stable sorts, the last key first
        desc = clause.startswith("-")
        key = _SORT_KEYS.get(clause.lstrip("+-").lower())
        if key is None:
            raise SockaddrError(f'unknown sort key "{clause}": Yurt reads {", ".join(sorted(_SORT_KEYS))} '
                                '(each may start with + or -)')
        out.sort(key=key, reverse=desc)
    return out


def functions(table: list[IfAddr]) -> dict[str, Callable[..., Any]]:
    """go-sockaddr's template functions over `table` (the host's addresses)."""

    def candidates(private: bool) -> list[IfAddr]:
        ips = [a for a in table if a.forwardable and "up" in a.flags]
        return [a for a in sort_by("default,type,size", ips) if a.in_any(RFC_6890) == private]

    def first_address(addrs: list[IfAddr]) -> str:
        return str(addrs[0].iface.ip) if addrs else ""

    def all_ips(private: bool) -> str:
        ips = sort_by("type,size", table)
        if private:
            ips = [a for a in ips if a.in_any(RFC_6890) and a.forwardable]
        else:
            ips = [a for a in ips if not a.in_any(RFC_6890)]
        return " ".join(str(a.iface.ip) for a in ips)

    def named(pattern: str) -> list[IfAddr]:
        rx = _regexp(pattern, "interface name")
        return sort_by("type,size", [a for a in table if rx.search(a.name)])

    def include(selector: str, value: Any, addrs: Any) -> list[IfAddr]:
        return [a for a in _ifaddrs(addrs, "include") if _matches(a, str(selector), str(value))]

    def exclude(selector: str, value: Any, addrs: Any) -> list[IfAddr]:
        return [a for a in _ifaddrs(addrs, "exclude") if not _matches(a, str(selector), str(value))]

    def attr(name: str, addrs: Any) -> str:
        lst = _ifaddrs(addrs, "attr")
        return lst[0].attr(str(name)) if lst else ""

    def join(name: str, sep: str, addrs: Any) -> str:
        return str(sep).join(a.attr(str(name)) for a in _ifaddrs(addrs, "join"))

    def limit(n: Any, addrs: Any) -> list[IfAddr]:
        return _ifaddrs(addrs, "limit")[:max(int(n), 0)]

    def offset(n: Any, addrs: Any) -> list[IfAddr]:
        lst, k = _ifaddrs(addrs, "offset"), int(n)
        if abs(k) > len(lst):
            raise SockaddrError(f"offset {k} is past the end of the {len(lst)} addresses")
        return lst[len(lst) + k:] if k < 0 else lst[k:]

    def unique(name: str, addrs: Any) -> list[IfAddr]:
        if str(name).lower() not in ("address", "name"):
            raise SockaddrError(f'unique takes "address" or "name", not "{name}"')
        out: list[IfAddr] = []
        for a in _ifaddrs(addrs, "unique"):
            if not out or out[-1].attr(name) != a.attr(name):
                out.append(a)
        return out

    def math(*_args: Any) -> Any:
        raise SockaddrError("go-sockaddr's math is not supported in Yurt: write the address it would give")

    return {
        "GetAllInterfaces": lambda: list(table),
        "GetDefaultInterfaces": lambda: [a for a in table if a.default],
        "GetPrivateInterfaces": lambda: candidates(True),
        "GetPublicInterfaces": lambda: candidates(False),
        "GetPrivateIP": lambda: first_address(candidates(True)),
        "GetPublicIP": lambda: first_address(candidates(False)),
        "GetPrivateIPs": lambda: all_ips(True),
        "GetPublicIPs": lambda: all_ips(False),
        "GetInterfaceIP": lambda name: first_address([a for a in named(name) if a.forwardable]),
        "GetInterfaceIPs": lambda name: " ".join(str(a.iface.ip) for a in named(name)),
        "include": include, "exclude": exclude, "sort": lambda keys, addrs: sort_by(keys, _ifaddrs(addrs, "sort")),
        "attr": attr, "join": join, "limit": limit, "offset": offset, "unique": unique, "math": math,
    }


def execute_sockaddr(text: str, name: str, table: list[IfAddr] | None = None) -> str:
    """What the go-sockaddr template `text` gives over `table` (default: this host's addresses),
    stripped. Raises TemplateError (a parse or a function's error) or SockaddrError."""
    from .render import execute
    return execute(text, None, name=name, funcs=functions(host_addresses() if table is None else table),
                   missing_key_error=True).strip()


def sockaddr(*args: Any) -> str:
    """consul-template's ``sockaddr``: its arguments, joined by spaces, as one go-sockaddr action."""
    if not args:
        raise SockaddrError('sockaddr takes a go-sockaddr expression, e.g. sockaddr "GetPrivateIP"')
    from .parse import TemplateError
    try:
        return execute_sockaddr("{{ " + " ".join(str(a) for a in args) + " }}", "sockaddr")
    except TemplateError as e:   # the expression's own error, inside the template's
        raise SockaddrError(str(e)) from None
