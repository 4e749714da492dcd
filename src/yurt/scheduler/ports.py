"""Host ports of a node: what is taken, and picking ports for a new allocation.

Nomad's NetworkIndex, reduced to one port space per node (a port taken on one of its host
networks is taken on all; each port gets the address of the host network it asks for): used
ports = the node's reserved host ports (``"22,80,8000-8010"``) plus every port of the
allocations on it. Static ports must be free; dynamic ones are drawn at random in
``[min_dynamic_port, max_dynamic_port]`` (a few tries), then by a precise scan of what is left.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from functools import lru_cache

from yurt.structs import AllocatedPortMapping, Allocation, NetworkResource, Node, built

DEFAULT_HOST_IP = "127.0.0.1"
DEFAULT_HOST_NETWORK = "default"
RANDOM_TRIES = 20


@lru_cache(maxsize=256)
def parse_port_spec(spec: str) -> frozenset[int]:
    """``"22,80,8000-8010"`` -> the set of ports; malformed parts are skipped."""
    out: set[int] = set()
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            continue
        out.update(range(a, b + 1))
    return frozenset(out)


_RESERVED: dict[str, tuple[Node, frozenset[int]]] = {}   # node id -> (the node object, its ports)


def reserved_ports(node: Node) -> frozenset[int]:
    """The node's reserved host ports, those of its host networks included (one port space per
    node: a port reserved on one of its addresses is not handed out on another). Kept per node
    object: a stored node is never changed in place (an update stores a new object)."""
    hit = _RESERVED.get(node.id)
    if hit is not None and hit[0] is node:
        return hit[1]
    spec = node.reserved_resources.networks.reserved_host_ports
    extra = [a.reserved_ports for net in node.node_resources.node_networks for a in net.addresses
             if a.reserved_ports]
    ports = parse_port_spec(",".join([spec, *extra])) if extra else parse_port_spec(spec)
    if len(_RESERVED) > 100_000:   # nodes long gone: start over
        _RESERVED.clear()
    _RESERVED[node.id] = (node, ports)
    return ports


def host_ip(node: Node, host_network: str = DEFAULT_HOST_NETWORK) -> str:
    """The node's address in ``host_network`` ("" when it has no such network)."""
    default = node.attributes.get("unique.network.ip-address") or DEFAULT_HOST_IP
    if host_network in ("", DEFAULT_HOST_NETWORK):
        return default
    return node.node_resources.host_network_address(host_network) or ""


class PortAsk:
    """A group's network ask, flattened once per evaluation."""

    __slots__ = ("static", "dynamic", "host_networks")

    def __init__(self, networks: list[NetworkResource] | None) -> None:
        self.static: list[tuple[str, int, int, str]] = []    # (label, value, to, host network)
        self.dynamic: list[tuple[str, int, str]] = []        # (label, to, host network)
        for net in networks or []:
            for p in net.reserved_ports or []:
                self.static.append((p.label, p.value, p.to, p.host_network or DEFAULT_HOST_NETWORK))
            for p in net.dynamic_ports or []:
                self.dynamic.append((p.label, p.to, p.host_network or DEFAULT_HOST_NETWORK))
        # (host network, port label) for every port that asks for a network other than the default
        self.host_networks = [(hn, label) for label, _, _, hn in self.static if hn != DEFAULT_HOST_NETWORK]
        self.host_networks += [(hn, label) for label, _, hn in self.dynamic if hn != DEFAULT_HOST_NETWORK]

    def __bool__(self) -> bool:
        return bool(self.static or self.dynamic)


def ports_free(ask: PortAsk, used: set[int] | frozenset[int], node: Node) -> str:
    """"" when the ask can be met on the node (checked without choosing dynamic ports),
    else the exhausted dimension."""
    for hn, label in ask.host_networks:
        if node.node_resources.host_network_address(hn) is None:
            return f'missing host network "{hn}" for port "{label}"'
    taken: set[int] = set()
    for label, value, _, _ in ask.static:
        if value in used or value in taken:
            return f"network: reserved port collision {label}={value}"
        taken.add(value)
    if ask.dynamic:
        lo = node.node_resources.min_dynamic_port or 20000
        hi = node.node_resources.max_dynamic_port or 32000
        # a cheap lower bound of what is free; the precise count only when it is tight
        if hi - lo + 1 - len(used) - len(taken) < len(ask.dynamic):
            free = sum(1 for p in range(lo, hi + 1) if p not in used and p not in taken)
            if free < len(ask.dynamic):
                return "network: dynamic port selection failed"
    return ""


def assign_ports(ask: PortAsk, used: set[int] | frozenset[int], node: Node, rng: random.Random
                 ) -> tuple[list[tuple[str, int, int, str]] | None, str]:
    """Pick host ports for an ask: ``([(label, value, to, host ip)], "")`` or ``(None, dimension)``."""
    taken: set[int] = set()
    out: list[tuple[str, int, int, str]] = []
    for label, value, to, hn in ask.static:
        if value in used or value in taken:
            return None, f"network: reserved port collision {label}={value}"
        taken.add(value)
        out.append((label, value, value if to == -1 else to, host_ip(node, hn)))
    if ask.dynamic:
        lo = node.node_resources.min_dynamic_port or 20000
        hi = node.node_resources.max_dynamic_port or 32000
        for label, to, hn in ask.dynamic:
            port = _pick(lo, hi, used, taken, rng)
            if port is None:
                return None, "network: dynamic port selection failed"
            taken.add(port)
            out.append((label, port, port if to == -1 else to, host_ip(node, hn)))
    return out, ""


def _pick(lo: int, hi: int, used: set[int] | frozenset[int], taken: set[int], rng: random.Random) -> int | None:
    span = hi - lo + 1
    rand = rng.random
    for _ in range(RANDOM_TRIES):
        port = lo + int(rand() * span)
        if port not in used and port not in taken:
            return port
    free = [p for p in range(lo, hi + 1) if p not in used and p not in taken]
    return rng.choice(free) if free else None


def port_mappings(assigned: list[tuple[str, int, int, str]]) -> list[AllocatedPortMapping]:
    return [built(AllocatedPortMapping, {"label": label, "value": value, "to": to, "host_ip": ip})
            for label, value, to, ip in assigned]


def port_collisions(node: Node, allocs: Iterable[Allocation]) -> list[str]:
    """Ports used twice among ``allocs`` or reserved on the node, e.g. ``"http=9002"``.

    The plan applier uses it to re-check a plan against the latest state.
    """
    seen = set(reserved_ports(node))
    out = []
    for alloc in allocs:
        for p in alloc.allocated_resources.shared.ports:
            if p.value in seen:
                out.append(f"{p.label}={p.value}")
            seen.add(p.value)
    return out
