"""Which nodes can run a group at all: readiness, datacenter, pool, drivers, network, constraints.

The checks that only depend on the node and the job are cached per node for one evaluation
(Nomad caches them per computed node class); distinct_hosts / distinct_property depend on what
is already placed and are checked for every placement.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from fnmatch import fnmatchcase
from typing import Final

from yurt.structs import Constraint, Job, Node, TaskGroup

from .constraints import (DISTINCT_HOSTS, DISTINCT_PROPERTY, compile_constraint, describe,
                          resolve_target)

class _Unset(Enum):
    UNSET = 0


_UNSET: Final = _Unset.UNSET  # a cache miss (None is a cached answer: feasible)
CNI_PLUGINS = ("bridge", "firewall", "host-local", "loopback", "portmap")


def _is_glob(p: str) -> bool:
    return any(ch in p for ch in "*?[")


_ready_of: dict[tuple[str, tuple[str, ...]], tuple[list[Node], list[Node], dict[str, int], int]] = {}
"""ready_nodes' answers for the node list they were computed from (the state's, shared while no
node changes), by pool and datacenters: one filtering of 5,000 nodes, not one per evaluation."""


def ready_nodes(job: Job, nodes: list[Node]) -> tuple[list[Node], dict[str, int], int]:
    """(ready nodes in the job's datacenters and pool, ready count per datacenter, pool size);
    the list and dict are the caller's own (a Stack shuffles its list in place)."""
    key = (job.node_pool or "default", tuple(job.datacenters or ()))
    hit = _ready_of.get(key)
    if hit is not None and hit[0] is nodes:
        return list(hit[1]), dict(hit[2]), hit[3]
    ready, by_dc, in_pool = _ready_nodes(job, nodes)
    if len(_ready_of) > 64:
        _ready_of.clear()
    _ready_of[key] = (nodes, ready, by_dc, in_pool)
    return list(ready), dict(by_dc), in_pool


def _ready_nodes(job: Job, nodes: list[Node]) -> tuple[list[Node], dict[str, int], int]:
    patterns = job.datacenters or ["*"]
    pool = job.node_pool or "default"
    any_pool = pool == "all"
    ready = [n for n in nodes if (any_pool or n.node_pool == pool) and n.status == "ready"
             and n.scheduling_eligibility == "eligible" and not n.drain]
    in_pool = len(ready)
    if "*" not in patterns:
        literal = {p for p in patterns if not _is_glob(p)}
        globs = [p for p in patterns if _is_glob(p)]
        present = {n.datacenter for n in ready}
        allowed = {dc for dc in present if dc in literal or any(fnmatchcase(dc, g) for g in globs)}
        if allowed != present:
            ready = [n for n in ready if n.datacenter in allowed]
    by_dc: dict[str, int] = {p: 0 for p in patterns if not _is_glob(p)}
    for n in ready:
        by_dc[n.datacenter] = by_dc.get(n.datacenter, 0) + 1
    return ready, by_dc, in_pool


def escapes_class(constraints: list[Constraint] | None) -> bool:
    """Whether a constraint reads what the computed node class does not cover (a `unique.`
    target, or one the class does not hash), so it must be checked node by node (Nomad's
    escaped computed class)."""
    for c in constraints or []:
        for target in (c.l_target, c.r_target):
            if not target or not target.startswith("${"):
                continue
            inner = target[2:-1] if target.endswith("}") else target[2:]
            if "unique." in inner or not (inner in CLASS_FIELDS or inner.startswith(("attr.", "meta."))):
                return True
    return False


CLASS_FIELDS = frozenset({"node.datacenter", "node.class", "node.pool", "node.region"})


def class_key(node: Node, escaped: bool) -> str:
    """What a checker's answer for `node` is kept by: its computed class when the checks read
    only what the class covers, else the node itself."""
    return node.id if escaped or not node.computed_class else node.computed_class


def _plain(constraints: list[Constraint] | None) -> list[tuple[Callable[[Node], bool], str]]:
    return [(compile_constraint(c.l_target, c.operand, c.r_target),
             describe(c.l_target, c.operand, c.r_target))
            for c in constraints or [] if c.operand not in (DISTINCT_HOSTS, DISTINCT_PROPERTY)]


def _check_constraints(node: Node, constraints: list[tuple[Callable[[Node], bool], str]]) -> str | None:
    for check, text in constraints:
        if not check(node):
            return text
    return None


def driver_ok(node: Node, driver: str) -> bool:
    info = node.drivers.get(driver)
    if info is not None:
        return info.detected and info.healthy
    return node.attributes.get(f"driver.{driver}", "").lower() in ("1", "true")


class JobChecker:
    """The job-level constraints, cached per node."""

    def __init__(self, job: Job) -> None:
        self.constraints = _plain(job.constraints)
        self.escaped = escapes_class(job.constraints)
        self.cache: dict[str, str | None] = {}   # by computed class (or node id when escaped)

    def __call__(self, node: Node) -> str | None:
        key = class_key(node, self.escaped)
        reason = self.cache.get(key, _UNSET)
        if reason is _UNSET:
            reason = self.cache[key] = _check_constraints(node, self.constraints)
        return reason


class GroupChecker:
    """A group's drivers, network and constraints (its own and its tasks'), cached per node."""

    def __init__(self, tg: TaskGroup) -> None:
        self.drivers = sorted({t.driver for t in tg.tasks or [] if t.driver})
        self.bridge = any((n.mode or "host") == "bridge" for n in tg.networks or [])
        self.constraints = _plain(tg.constraints)
        for t in tg.tasks or []:
            self.constraints += _plain(t.constraints)
        # host volumes by source: read-write if any request of it is (Nomad's HostVolumeChecker)
        self.host_volumes: dict[str, bool] = {}
        for v in (tg.volumes or {}).values():
            if v.type == "host" and v.source:
                self.host_volumes[v.source] = self.host_volumes.get(v.source, True) and v.read_only
        self.escaped = escapes_class(tg.constraints) or any(escapes_class(t.constraints) for t in tg.tasks or [])
        self.cache: dict[str, str | None] = {}   # by computed class (or node id when escaped)

    def __call__(self, node: Node) -> str | None:
        key = class_key(node, self.escaped)
        reason = self.cache.get(key, _UNSET)
        if reason is _UNSET:
            reason = self.cache[key] = self._check(node)
        return reason

    def _check(self, node: Node) -> str | None:
        for d in self.drivers:
            if not driver_ok(node, d):
                return f"missing driver {d}"
        if self.bridge:
            for p in CNI_PLUGINS:
                if f"plugins.cni.version.{p}" not in node.attributes:
                    return (f'missing CNI plugin "{p}" (install containernetworking-plugins; '
                            'yurt doctor on the node shows what else bridge networking needs)')
        reason = host_volumes_reason(node, self.host_volumes)
        if reason:
            return reason
        return _check_constraints(node, self.constraints)


def host_volumes_reason(node: Node, wanted: dict[str, bool]) -> str | None:
    """Why the node cannot give the group its host volumes (source -> read-only), or None.
    The reason starts as Nomad's metric does: "missing compatible host volumes"."""
    for source, read_only in sorted(wanted.items()):
        have = node.host_volumes.get(source)
        if have is None:
            return f'missing compatible host volumes (no host volume "{source}")'
        if have.read_only and not read_only:
            return f'missing compatible host volumes ("{source}" is read-only; the group asks to write to it)'
    return None


class DistinctRules:
    """distinct_hosts and distinct_property rules that apply to one group.

    ``hosts``: "job" or "group" scope (or None). ``properties``: (attribute, limit, scope).
    """

    def __init__(self, job: Job, tg: TaskGroup) -> None:
        self.hosts: str | None = None
        self.properties: list[tuple[str, int, str]] = []
        for scope, cons in (("job", job.constraints), ("group", tg.constraints)):
            for c in cons or []:
                if c.operand == DISTINCT_HOSTS:
                    if (c.r_target or "true").strip().lower() not in ("false", "0"):
                        self.hosts = "job" if "job" in (scope, self.hosts) else "group"
                elif c.operand == DISTINCT_PROPERTY:
                    try:
                        limit = int(c.r_target) if c.r_target else 1
                    except ValueError:
                        limit = 1
                    self.properties.append((c.l_target, max(limit, 1), scope))

    def __bool__(self) -> bool:
        return self.hosts is not None or bool(self.properties)


def property_value(node: Node, attribute: str) -> str | None:
    value, found = resolve_target(attribute, node)
    return value if found else None
