"""Host ports of a node: what is taken, and picking ports for a new allocation.

Nomad's NetworkIndex, reduced to one host network: used ports = the node's reserved host ports
(``"22,80,8000-8010"``) plus every port of the allocations on it. Static ports must be free;
dynamic ones are drawn at random in ``[min_dynamic_port, max_dynamic_port]`` (a few tries),
then by a precise scan of what is left.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from functools import lru_cache

from yurt.structs import AllocatedPortMapping, Allocation, NetworkResource, Node

DEFAULT_HOST_IP = "127.0.0.1"
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


def reserved_ports(node: Node) -> frozenset[int]:
    return parse_port_spec(node.reserved_resources.networks.reserved_host_ports)


def host_ip(node: Node) -> str:
    return node.attributes.get("unique.network.ip-address") or DEFAULT_HOST_IP


class PortAsk:
    """A group's network ask, flattened once per evaluation."""

    __slots__ = ("static", "dynamic")

    def __init__(self, networks: list[NetworkResource] | None) -> None:
        self.static: list[tuple[str, int, int]] = []    # (label, value, to)
        self.dynamic: list[tuple[str, int]] = []        # (label, to)
        for net in networks or []:
            for p in net.reserved_ports or []:
                self.static.append((p.label, p.value, p.to))
            for p in net.dynamic_ports or []:
                self.dynamic.append((p.label, p.to))

    def __bool__(self) -> bool:
        return bool(self.static or self.dynamic)


def ports_free(ask: PortAsk, used: set[int] | frozenset[int], node: Node) -> str:
    """"" when the ask can be met on the node (checked without choosing dynamic ports),
    else the exhausted dimension."""
    taken: set[int] = set()
    for label, value, _ in ask.static:
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
                 ) -> tuple[list[tuple[str, int, int]] | None, str]:
    """Pick host ports for an ask: ``([(label, value, to)], "")`` or ``(None, dimension)``."""
    taken: set[int] = set()
    out: list[tuple[str, int, int]] = []
    for label, value, to in ask.static:
        if value in used or value in taken:
            return None, f"network: reserved port collision {label}={value}"
        taken.add(value)
        out.append((label, value, value if to == -1 else to))
    if ask.dynamic:
        lo = node.node_resources.min_dynamic_port or 20000
        hi = node.node_resources.max_dynamic_port or 32000
        for label, to in ask.dynamic:
            port = _pick(lo, hi, used, taken, rng)
            if port is None:
                return None, "network: dynamic port selection failed"
            taken.add(port)
            out.append((label, port, port if to == -1 else to))
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


_MAPPING = AllocatedPortMapping.model_construct(label="", value=0, to=0, host_ip="")


def port_mappings(assigned: list[tuple[str, int, int]], ip: str) -> list[AllocatedPortMapping]:
    return [_MAPPING.model_copy(update={"label": label, "value": value, "to": to, "host_ip": ip})
            for label, value, to in assigned]


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
