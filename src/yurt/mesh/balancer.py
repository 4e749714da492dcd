"""Endpoint balancing for an upstream: least connections, round-robin among ties."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Instance:
    """One healthy mesh endpoint of a destination: its sidecar's public address and the
    SPIFFE ID its certificate must carry."""
    address: str
    port: int
    datacenter: str
    service_id: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)


def instances_from_health(entries: list[dict], default_dc: str) -> list[Instance]:
    """Consul health/connect entries (already ?passing) → instances. Address = Service.Address,
    else Node.Address (as Consul's resolver)."""
    out = []
    for e in entries or []:
        svc = e.get("Service") or {}
        node = e.get("Node") or {}
        if any((c.get("Status") or "passing") != "passing" for c in e.get("Checks") or []):
            continue
        addr = svc.get("Address") or node.get("Address")
        port = svc.get("Port")
        if not addr or not port:
            continue
        out.append(Instance(addr, int(port), node.get("Datacenter") or default_dc, svc.get("ID", "")))
    return out


class Balancer:
    """Reactor-thread only. `pick(exclude)` → the instance with the fewest active connections
    (ties broken round-robin), `acquire`/`release` keep the counts."""

    def __init__(self) -> None:
        self.instances: list[Instance] = []
        self.active: dict[tuple[str, int], int] = {}
        self._rr = 0
        # the upstream's connections being set up (upstream.MAX_DIALING at most) and the ones
        # waiting for a place, oldest first
        self.dialing = 0
        self.waiting: deque = deque()
        # a transparent proxy's destination whose first endpoints have not come yet: its
        # connections wait in `waiting` until they do (`warm`)
        self.cold = False

    def update(self, instances: list[Instance]) -> None:
        self.instances = list(instances)

    def pick(self, exclude: set[tuple[str, int]] = frozenset()) -> Instance | None:  # type: ignore[assignment]
        n = len(self.instances)
        best = None
        best_load = 1 << 62
        start = self._rr
        for i in range(n):
            inst = self.instances[(start + i) % n]
            if inst.key in exclude:
                continue
            load = self.active.get(inst.key, 0)
            if load < best_load:
                best, best_load = inst, load
        self._rr = (start + 1) % n if n else 0
        return best

    def acquire(self, inst: Instance) -> None:
        self.active[inst.key] = self.active.get(inst.key, 0) + 1

    def release(self, inst: Instance) -> None:
        n = self.active.get(inst.key, 0) - 1
        if n > 0:
            self.active[inst.key] = n
        else:
            self.active.pop(inst.key, None)
