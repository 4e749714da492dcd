"""Scoring a feasible node (Nomad feasible/rank.go, spread.go; structs/funcs.go ScoreFitBinPack).

Each iterator appends a score in -1..1; the final score is their mean.
"""

from __future__ import annotations

from yurt.structs import Affinity, Job, Node, Spread, TaskGroup

from .constraints import compile_constraint
from .feasible import property_value

BINPACK_MAX = 18.0
IMPLICIT_TARGET = "*"


def binpack_score(used_cpu: int, used_mem: int, cap_cpu: int, cap_mem: int) -> float:
    """BestFit v3 over cpu and memory (``used`` includes the allocation being placed), / 18."""
    free_cpu = 1.0 - used_cpu / cap_cpu if cap_cpu > 0 else 0.0
    free_mem = 1.0 - used_mem / cap_mem if cap_mem > 0 else 0.0
    total = 20.0 - (10.0 ** free_cpu + 10.0 ** free_mem)
    if total > BINPACK_MAX:
        total = BINPACK_MAX
    elif total < 0.0:
        total = 0.0
    return total / BINPACK_MAX


class Affinities:
    """The affinities of a job, its group and its tasks; a node's score is cached."""

    def __init__(self, job: Job, tg: TaskGroup) -> None:
        items: list[Affinity] = list(job.affinities or []) + list(tg.affinities or [])
        for t in tg.tasks or []:
            items += t.affinities or []
        self.items = [(compile_constraint(a.l_target, a.operand, a.r_target),
                       a.weight if a.weight is not None else 50) for a in items]
        self.sum_weight = float(sum(abs(w) for _, w in self.items))
        self.cache: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self.items) and self.sum_weight > 0

    def score(self, node: Node) -> float:
        s = self.cache.get(node.id)
        if s is None:
            total = sum(w for check, w in self.items if check(node))
            s = self.cache[node.id] = total / self.sum_weight
        return s


class Spreads:
    """Spread blocks of a job and group, with how many allocations each value already has."""

    def __init__(self, job: Job, tg: TaskGroup) -> None:
        spreads: list[Spread] = list(job.spreads or []) + list(tg.spreads or [])
        count = tg.count or 0
        self.items: list[tuple[str, float, dict[str, float] | None]] = []
        self.used: dict[str, dict[str, int]] = {}
        total_weight = sum((s.weight if s.weight is not None else 50) for s in spreads)
        for s in spreads:
            weight = (s.weight if s.weight is not None else 50) / total_weight if total_weight else 0.0
            desired: dict[str, float] | None = None
            if s.spread_target:
                desired = {}
                pct = 0
                for t in s.spread_target:
                    desired[t.value] = t.percent / 100.0 * count
                    pct += t.percent
                if pct < 100:
                    desired[IMPLICIT_TARGET] = (100 - pct) / 100.0 * count
            self.items.append((s.attribute, weight, desired))
            self.used[s.attribute] = {}

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, node: Node, delta: int = 1) -> None:
        for attr, _, _ in self.items:
            value = property_value(node, attr)
            if value is not None:
                used = self.used[attr]
                used[value] = used.get(value, 0) + delta

    def score(self, node: Node) -> float:
        total = 0.0
        for attr, weight, desired in self.items:
            value = property_value(node, attr)
            used = self.used[attr]
            if desired is None:
                total += _even_boost(used, value)
                continue
            if value is None:
                total -= 1.0
                continue
            want = desired.get(value, desired.get(IMPLICIT_TARGET))
            if not want:
                total -= 1.0
                continue
            total += ((want - (used.get(value, 0) + 1)) / want) * weight
        return total


def _even_boost(used: dict[str, int], value: str | None) -> float:
    if not used:
        return 0.0
    if value is None:
        return -1.0
    current = used.get(value, 0)
    counts = used.values()
    lo, hi = min(counts), max(counts)
    if current != lo:
        return (lo - current) / lo if lo else -1.0
    if lo == hi:
        return -1.0
    if lo == 0:
        return 1.0
    return (hi - current) / lo
