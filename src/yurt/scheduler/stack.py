"""Choosing a node for one allocation (Nomad feasible/stack.go GenericStack.Select).

Nodes come from a per-eval shuffled list, read round-robin from where the previous placement
stopped; each goes through feasibility (job, then group checks, then distinct_*), bin-packing
(resources and ports against what the node holds after this plan), then scoring. The limit
iterator stops after a few scored candidates; the best one wins.
"""

from __future__ import annotations

import math
import random
from typing import Any
from collections.abc import Callable, Mapping

from yurt.structs import Allocation, AllocMetric, Job, Node, NodeUsed, TaskGroup

from .feasible import _UNSET, DistinctRules, class_key, GroupChecker, JobChecker, property_value, ready_nodes
from .ports import PortAsk, assign_ports, ports_free, reserved_ports
from .rank import Affinities, Spreads, binpack_score
from .util import GroupAsk, alloc_usage

MAX_SKIP = 3
SCORE_THRESHOLD = 0.0
FEASIBILITY_LIMIT = 100
MAX_SCORE_META = 5


class NodeUsage:
    """What a node holds once this plan is applied (so far).

    A node no placement of this plan has touched is read from a shared usage (`base_usage`: the
    store's model of the node, made once per node object and `NodeUsed` object, never changed);
    the plan's own copy (`private`) is made when the plan places on the node or stops there."""

    __slots__ = ("cap_cpu", "cap_mem", "cap_disk", "port_span", "cpu", "mem", "disk", "ports",
                 "job_allocs", "tg_allocs", "used", "shared")

    def __init__(self, node: Node) -> None:
        nr, rr = node.node_resources, node.reserved_resources
        self.cap_cpu = nr.cpu.cpu_shares - rr.cpu.cpu_shares
        self.cap_mem = nr.memory.memory_mb - rr.memory.memory_mb
        self.cap_disk = nr.disk.disk_mb - rr.disk.disk_mb
        # how many ports the dynamic range holds (ports taken outside it count against it too:
        # a lower bound of what is free, as ports_free's)
        self.port_span = (nr.max_dynamic_port or 32000) - (nr.min_dynamic_port or 20000) + 1
        self.cpu = self.mem = self.disk = self.job_allocs = 0
        self.ports: set[int] = set(reserved_ports(node))
        self.tg_allocs: dict[str, int] = {}
        self.used: NodeUsed | None = None
        self.shared = False

    def start_from(self, used: NodeUsed) -> None:
        """What the store's model says the node's allocations hold."""
        self.cpu, self.mem, self.disk = used.cpu, used.mem, used.disk
        self.ports.update(used.ports)

    def private(self, job: tuple[str, str] | None) -> NodeUsage:
        """A copy of this shared usage for one plan to change, `job`'s allocations counted as mine."""
        c = NodeUsage.__new__(NodeUsage)
        c.cap_cpu, c.cap_mem, c.cap_disk, c.port_span = self.cap_cpu, self.cap_mem, self.cap_disk, self.port_span
        c.cpu, c.mem, c.disk = self.cpu, self.mem, self.disk
        c.ports = set(self.ports)
        used = c.used = self.used
        c.shared = False
        if job is not None and used is not None:
            c.job_allocs = used.jobs.get(job, 0)
            c.tg_allocs = dict(used.groups.get(job, {}))
        else:
            c.job_allocs, c.tg_allocs = 0, {}
        return c

    def job_count(self, job: tuple[str, str]) -> int:
        """Allocations of `job` on the node."""
        if not self.shared:
            return self.job_allocs
        return self.used.jobs.get(job, 0) if self.used is not None else 0

    def group_count(self, job: tuple[str, str], group: str) -> int:
        """Allocations of `job`'s `group` on the node."""
        if not self.shared:
            return self.tg_allocs.get(group, 0)
        groups = self.used.groups.get(job) if self.used is not None else None
        return groups.get(group, 0) if groups else 0

    def add(self, alloc: Allocation, mine: bool, sign: int = 1, held: dict[int, int] | None = None) -> None:
        """Count `alloc` in or out; `held`: how many allocations hold each port, counted down as
        they are counted out (a port another allocation still holds stays taken)."""
        assert not self.shared, "a shared usage is never changed"
        c, m, d = alloc_usage(alloc)
        self.cpu += sign * c
        self.mem += sign * m
        self.disk += sign * d
        for p in alloc.allocated_resources.shared.ports:
            if sign > 0:
                self.ports.add(p.value)
                continue
            if held is not None:
                held[p.value] = left = held.get(p.value, 0) - 1
                if left > 0:
                    continue
            self.ports.discard(p.value)
        if mine:
            self.job_allocs += sign
            self.tg_allocs[alloc.task_group] = self.tg_allocs.get(alloc.task_group, 0) + sign


# node id -> (the node object, its NodeUsed object, their shared usage). Stored nodes and
# NodeUsed objects are replaced, never changed, so the identity of both says it is current.
_BASES: dict[str, tuple[Node, NodeUsed | None, NodeUsage]] = {}


def base_usage(node: Node, used: NodeUsed | None) -> NodeUsage:
    """What `node` holds by the store's model alone (no plan's changes), shared and read-only:
    made once while neither the node nor its allocations change, not once per evaluation."""
    hit = _BASES.get(node.id)
    if hit is not None and hit[0] is node and hit[1] is used:
        return hit[2]
    u = NodeUsage(node)
    if used is not None:
        u.start_from(used)
    u.used, u.shared = used, True
    if len(_BASES) > 100_000:   # nodes long gone: start over
        _BASES.clear()
    _BASES[node.id] = (node, used, u)
    return u


class Group:
    """Everything about a group that is computed once per evaluation."""

    def __init__(self, job: Job, tg: TaskGroup, live: list[tuple[Node, str]], n_nodes: int) -> None:
        self.tg = tg
        self.count = tg.count or 0
        self.deployment_id = ""           # the deployment its new allocations join
        self.ask = GroupAsk(tg)
        self.ports = PortAsk(tg.networks)
        self.checker = GroupChecker(tg)
        self.distinct = DistinctRules(job, tg)
        self.affinities = Affinities(job, tg)
        self.spreads = Spreads(job, tg)
        self.failed: AllocMetric | None = None
        self.template: Allocation | None = None     # built by the scheduler on first placement
        self.feasible: dict[str, str | None] = {}   # job + group checks, per computed class or node id
        if self.affinities or self.spreads:
            self.limit = max(self.count, FEASIBILITY_LIMIT)
        elif job.type == "batch":
            self.limit = 2
        else:
            self.limit = max(2, math.ceil(math.log2(n_nodes))) if n_nodes > 1 else 2
        # distinct_property counts per rule, spread counts: from the job's live allocations
        self.property_used: list[dict[str, int]] = [{} for _ in self.distinct.properties]
        for node, group in live:
            self.count_placed(node, group)

    def count_placed(self, node: Node, group: str) -> None:
        for (attr, _, scope), used in zip(self.distinct.properties, self.property_used, strict=True):
            if scope == "job" or group == self.tg.name:
                value = property_value(node, attr)
                if value is not None:
                    used[value] = used.get(value, 0) + 1
        if group == self.tg.name and self.spreads:
            self.spreads.add(node)


class Stack:
    def __init__(self, job: Job, nodes: list[Node], rng: random.Random, *,
                 node_used: Callable[[str], NodeUsed | None],
                 stops: Mapping[str, object] | None = None) -> None:
        self.job = job
        self.job_key = (job.namespace or "default", job.id)
        self.rng = rng
        self.node_used = node_used           # the store's model of a node's allocations
        self.stops: Mapping[str, object] = stops if stops is not None else {}   # nodes the plan stops allocations on
        ready, self.by_dc, self.in_pool = ready_nodes(job, nodes)
        # Shuffled lazily (Fisher-Yates one step per node reached): a uniform random order
        # without paying for the nodes no placement ever looks at.
        self.order = ready
        self.offset = 0
        self.fixed = 0
        self.job_checker = JobChecker(job)
        self.usage: dict[str, NodeUsage] = {}

    def feasible_static(self, node: Node, group: Group) -> str | None:
        return self.job_checker(node) or group.checker(node)

    def _distinct(self, node: Node, group: Group, usage: NodeUsage) -> str | None:
        d = group.distinct
        if d.hosts == "job" and usage.job_count(self.job_key) > 0:
            return "distinct_hosts"
        if d.hosts == "group" and usage.group_count(self.job_key, group.tg.name) > 0:
            return "distinct_hosts"
        for (attr, limit, _), used in zip(d.properties, group.property_used, strict=True):
            value = property_value(node, attr)
            if value is None:
                return f"missing property {attr}"
            if used.get(value, 0) >= limit:
                return "distinct_property"
        return None

    def select_preferred(self, node_id: str, group: Group, usage_of: Callable[[Node], NodeUsage],
                         penalty: set[str] | None = None
                         ) -> tuple[Node | None, list[tuple[str, int, int, str]] | None, AllocMetric] | None:
        """``select`` on one node only (ephemeral_disk sticky: the previous allocation's node is
        tried first, as Nomad's findPreferredNode); None when it is not a ready node of the job."""
        node = next((n for n in self.order if n.id == node_id), None)
        if node is None:
            return None
        saved = self.order, self.offset, self.fixed
        self.order, self.offset, self.fixed = [node], 0, 1
        try:
            return self.select(group, penalty, usage_of)
        finally:
            self.order, self.offset, self.fixed = saved

    def select(self, group: Group, penalty: set[str] | None, usage_of: Callable[[Node], NodeUsage]
               ) -> tuple[Node | None, list[tuple[str, int, int, str]] | None, AllocMetric]:
        """The best node for one more allocation of ``group`` and its ports, and the metric of
        the choice (nodes evaluated, filtered and exhausted, the first candidates' scores)."""
        filtered: dict[str, int] = {}     # reason -> nodes (counted here, the metric built once)
        exhausted: dict[str, int] = {}    # dimension -> nodes
        scores_meta: list[dict[str, Any]] = []
        order = self.order
        n = len(order)
        ask_cpu, ask_mem, ask_disk = group.ask.cpu, group.ask.memory, group.ask.disk
        count = group.count
        tg_name = group.tg.name
        candidates: list[tuple[float, Node]] = []
        skipped: list[tuple[float, Node]] = []
        limit = group.limit
        offset = self.offset
        rand = self.rng.random
        job_checker, group_checker = self.job_checker, group.checker
        feasible = group.feasible       # computed class (or node id) -> reason it is filtered, or None
        by_node = job_checker.escaped or group_checker.escaped   # the checks read node-unique values
        usages = self.usage
        stops, node_used, bases, job_key = self.stops, self.node_used, _BASES, self.job_key
        distinct = bool(group.distinct)
        port_ask = group.ports if group.ports else None
        # dynamic ports on the default network only: free enough when the node's range holds
        # more than the ports taken plus the ask (ports_free only when it may be tight)
        dynamic_only = len(port_ask.dynamic) if port_ask is not None and not port_ask.static \
            and not port_ask.host_networks else 0
        affinities = group.affinities if group.affinities else None
        spreads = group.spreads if group.spreads else None
        evaluated = 0
        for _ in range(n):
            if offset >= self.fixed:
                j = offset + int(rand() * (n - offset))
                order[offset], order[j] = order[j], order[offset]
                self.fixed = offset + 1
            node = order[offset]
            offset += 1
            if offset == n:
                offset = 0
            evaluated += 1
            nid = node.id
            key = class_key(node, by_node)
            reason = feasible.get(key, _UNSET)
            if reason is _UNSET:
                reason = feasible[key] = job_checker(node) or group_checker(node)
            if reason is not None:
                filtered[reason] = filtered.get(reason, 0) + 1
                continue
            usage = usages.get(nid)
            if usage is None:
                if nid in stops:
                    usage = usage_of(node)
                else:   # untouched by this plan: the shared usage
                    used = node_used(nid)
                    hit = bases.get(nid)
                    usage = hit[2] if hit is not None and hit[0] is node and hit[1] is used else \
                        base_usage(node, used)
            if distinct:
                reason = self._distinct(node, group, usage)
                if reason is not None:
                    filtered[reason] = filtered.get(reason, 0) + 1
                    continue
            cpu = usage.cpu + ask_cpu
            if cpu > usage.cap_cpu:
                exhausted["cpu"] = exhausted.get("cpu", 0) + 1
                continue
            mem = usage.mem + ask_mem
            if mem > usage.cap_mem:
                exhausted["memory"] = exhausted.get("memory", 0) + 1
                continue
            if usage.disk + ask_disk > usage.cap_disk:
                exhausted["disk"] = exhausted.get("disk", 0) + 1
                continue
            if port_ask is not None and (dynamic_only == 0 or
                                         usage.port_span - len(usage.ports) < dynamic_only):
                dim = ports_free(port_ask, usage.ports, node)
                if dim:
                    exhausted[dim] = exhausted.get(dim, 0) + 1
                    continue
            binpack = binpack_score(cpu, mem, usage.cap_cpu, usage.cap_mem)
            total, parts = binpack, 1
            collisions = usage.group_count(job_key, tg_name)
            anti = -(collisions + 1) / count if collisions > 0 and count > 0 else 0.0
            if anti:
                total += anti
                parts += 1
            pen = -1.0 if penalty and nid in penalty else 0.0
            if pen:
                total += pen
                parts += 1
            aff = affinities.score(node) if affinities is not None else 0.0
            if aff:
                total += aff
                parts += 1
            spr = spreads.score(node) if spreads is not None else 0.0
            if spr:
                total += spr
                parts += 1
            final = total / parts
            if len(scores_meta) < MAX_SCORE_META:
                detail = {"binpack": binpack}
                if parts > 1:
                    if anti:
                        detail["job-anti-affinity"] = anti
                    if pen:
                        detail["node-reschedule-penalty"] = pen
                    if aff:
                        detail["node-affinity"] = aff
                    if spr:
                        detail["allocation-spread"] = spr
                scores_meta.append({"NodeID": nid, "Scores": detail, "NormScore": final})
            if final <= SCORE_THRESHOLD and len(skipped) < MAX_SKIP:
                skipped.append((final, node))
                continue
            candidates.append((final, node))
            if len(candidates) >= limit:
                break
        metric = AllocMetric.of_placement(evaluated=evaluated, in_pool=self.in_pool,
                                          available=dict(self.by_dc), filtered=filtered,
                                          exhausted=exhausted, score_meta=scores_meta)
        self.offset = offset
        if not candidates:
            candidates = skipped
        if not candidates:
            return None, None, metric
        best = candidates[0]
        for c in candidates[1:]:
            if c[0] > best[0]:
                best = c
        node = best[1]
        ports = None
        if group.ports:   # dynamic ports are drawn for the winner only
            ports, _ = assign_ports(group.ports, usage_of(node).ports, node, self.rng)
        return node, ports, metric
