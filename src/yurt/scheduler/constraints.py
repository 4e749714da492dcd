"""Constraint operators (Nomad scheduler/feasible/feasible.go checkConstraint) and targets.

A target is either a literal or an interpolation: ``${node.unique.id}``, ``${node.unique.name}``,
``${node.datacenter}``, ``${node.class}``, ``${node.pool}``, ``${node.region}``,
``${attr.<key>}``, ``${meta.<key>}``. Resolving gives ``(value, found)``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from yurt.structs import Node

DISTINCT_HOSTS = "distinct_hosts"
DISTINCT_PROPERTY = "distinct_property"
OPERANDS = ("=", "==", "is", "!=", "not", "<", "<=", ">", ">=", "regexp", "version", "semver",
            "set_contains", "set_contains_all", "set_contains_any", "is_set", "is_not_set",
            DISTINCT_HOSTS, DISTINCT_PROPERTY)


def _node_region(n: Node) -> str | None:
    return n.attributes.get("nomad.region") or "global"


_NODE_FIELDS: dict[str, Callable[[Node], str | None]] = {
    "node.unique.id": lambda n: n.id,
    "node.unique.name": lambda n: n.name,
    "node.datacenter": lambda n: n.datacenter,
    "node.class": lambda n: n.node_class,
    "node.pool": lambda n: n.node_pool,
    "node.region": _node_region,
}


def resolve_target(target: str, node: Node) -> tuple[str | None, bool]:
    """The value a constraint target has on a node, and whether it is there at all."""
    if not target.startswith("${"):
        return target, True
    inner = target[2:-1] if target.endswith("}") else target[2:]
    get = _NODE_FIELDS.get(inner)
    if get is not None:
        value = get(node)
        return value, value is not None
    if inner.startswith("attr."):
        value = node.attributes.get(inner[5:])
        return value, value is not None
    if inner.startswith("meta."):
        value = node.meta.get(inner[5:])
        return value, value is not None
    return None, False


# --- ordering ---------------------------------------------------------------------------------

def _to_float(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


_ORDER: dict[str, Callable[[Any, Any], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt}


def check_order(op: str, left: str, right: str) -> bool:
    """Numbers compare as numbers when both sides are numbers, else as strings."""
    cmp = _ORDER.get(op, operator.ge)
    lf, rf = _to_float(left), _to_float(right)
    if lf is not None and rf is not None:
        return cmp(lf, rf)
    return cmp(left, right)


# --- versions (hashicorp/go-version for "version", strict semver ordering for "semver") -------

_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.\-~]+))?(?:\+([0-9A-Za-z.\-~]+))?$")


class Version:
    __slots__ = ("segments", "pre", "nseg")

    def __init__(self, segments: tuple[int, ...], pre: str, nseg: int) -> None:
        self.segments, self.pre, self.nseg = segments, pre, nseg

    def cmp(self, other: Version) -> int:
        if self.segments != other.segments:
            return -1 if self.segments < other.segments else 1
        return _cmp_pre(self.pre, other.pre)


def parse_version(text: str) -> Version | None:
    m = _VERSION.match(text.strip())
    if not m:
        return None
    nums = tuple(int(x) for x in m.group(1).split("."))
    seg = nums + (0,) * (3 - len(nums)) if len(nums) < 3 else nums
    return Version(seg, m.group(2) or "", len(nums))


def _cmp_pre(a: str, b: str) -> int:
    if a == b:
        return 0
    if not a:
        return 1   # a release is newer than any of its pre-releases
    if not b:
        return -1
    pa, pb = a.split("."), b.split(".")
    for x, y in zip(pa, pb, strict=False):
        if x == y:
            continue
        xd, yd = x.isdigit(), y.isdigit()
        if xd and yd:
            return -1 if int(x) < int(y) else 1
        if xd != yd:
            return -1 if xd else 1   # numeric identifiers sort before alphanumeric ones
        return -1 if x < y else 1
    return (len(pa) > len(pb)) - (len(pa) < len(pb))


_CONSTRAINT = re.compile(r"^\s*(=|!=|>=|<=|>|<|~>)?\s*(\S+)\s*$")


@lru_cache(maxsize=1024)
def parse_version_constraint(text: str) -> tuple[tuple[str, Version], ...] | None:
    """">= 1.2, < 2" -> ((">=", 1.2.0), ("<", 2.0.0)); None when it does not parse."""
    out = []
    for part in text.split(","):
        m = _CONSTRAINT.match(part)
        if not m:
            return None
        v = parse_version(m.group(2))
        if v is None:
            return None
        out.append((m.group(1) or "=", v))
    return tuple(out) if out else None


def _check_one(op: str, v: Version, c: Version) -> bool:
    r = v.cmp(c)
    if op == "=":
        return r == 0
    if op == "!=":
        return r != 0
    if op == ">":
        return r > 0
    if op == "<":
        return r < 0
    if op == ">=":
        return r >= 0
    if op == "<=":
        return r <= 0
    # "~>": at least c, and below the next release of its second-to-last written segment
    if r < 0:
        return False
    keep = max(c.nseg - 1, 1)
    if v.segments[:keep - 1] != c.segments[:keep - 1]:
        return False
    return v.segments[keep - 1] == c.segments[keep - 1] if c.nseg > 1 else True


def version_match(value: str, constraint: str, *, semver: bool) -> bool:
    v = parse_version(value)
    cons = parse_version_constraint(constraint)
    if v is None or cons is None:
        return False
    for op, c in cons:
        if not semver and v.pre:
            # go-version: a pre-release only satisfies constraints written with a pre-release
            # of the same release.
            if not c.pre or v.segments != c.segments:
                return False
        if not _check_one(op, v, c):
            return False
    return True


# --- everything else --------------------------------------------------------------------------

@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


@lru_cache(maxsize=8192)
def _set(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(","))


def check_operator(op: str, left: str | None, lfound: bool, right: str | None, rfound: bool) -> bool:
    """Whether ``left <op> right`` holds (Nomad's checkConstraint)."""
    if op in ("=", "==", "is"):
        return lfound and rfound and left == right
    if op in ("!=", "not"):
        return not (lfound == rfound and left == right)
    if op == "is_set":
        return lfound
    if op == "is_not_set":
        return not lfound
    if not (lfound and rfound) or left is None or right is None:  # found: not None, said twice for mypy
        return False
    if op in ("<", "<=", ">", ">="):
        return check_order(op, left, right)
    if op == "regexp":
        rx = _regex(right)
        return rx is not None and rx.search(left) is not None
    if op == "version":
        return version_match(left, right, semver=False)
    if op == "semver":
        return version_match(left, right, semver=True)
    if op in ("set_contains", "set_contains_all"):
        return _set(right) <= _set(left)
    if op == "set_contains_any":
        return not _set(right).isdisjoint(_set(left))
    return False


def satisfies(node: Node, l_target: str, operand: str, r_target: str) -> bool:
    """Whether a node meets one constraint (or affinity) of the plain kind."""
    left, lfound = resolve_target(l_target, node)
    right, rfound = resolve_target(r_target, node)
    return check_operator(operand or "=", left, lfound, right, rfound)


def describe(l_target: str, operand: str, r_target: str) -> str:
    """How a constraint reads in metrics: ``${attr.kernel.name} = linux``."""
    return f"{l_target} {operand or '='} {r_target}".strip()


# --- compiled form: the right side parsed once, the left side read straight off the node ------

def _getter(target: str) -> Callable[[Node], str | None] | None:
    """A function reading an interpolated target off a node; None for a literal."""
    if not target.startswith("${"):
        return None
    inner = target[2:-1] if target.endswith("}") else target[2:]
    get = _NODE_FIELDS.get(inner)
    if get is not None:
        return get
    if inner.startswith("attr."):
        key = inner[5:]
        return lambda n: n.attributes.get(key)
    if inner.startswith("meta."):
        key = inner[5:]
        return lambda n: n.meta.get(key)
    return lambda n: None


def compile_constraint(l_target: str, operand: str, r_target: str) -> Callable[[Node], bool]:
    """``satisfies(node, l, op, r)`` as a function of the node, with the right side pre-parsed."""
    op = operand or "="
    get_l = _getter(l_target)
    if get_l is None or _getter(r_target) is not None:
        return lambda n: satisfies(n, l_target, op, r_target)
    r = r_target
    if op in ("=", "==", "is"):
        return lambda n: get_l(n) == r
    if op in ("!=", "not"):
        return lambda n: get_l(n) != r
    if op == "is_set":
        return lambda n: get_l(n) is not None
    if op == "is_not_set":
        return lambda n: get_l(n) is None
    if op in ("set_contains", "set_contains_all", "set_contains_any"):
        want = _set(r)
        memo: dict[str, bool] = {}
        test = want.issubset if op != "set_contains_any" else (lambda s: not want.isdisjoint(s))

        def check(n: Node) -> bool:
            v = get_l(n)
            if v is None:
                return False
            hit = memo.get(v)
            if hit is None:
                hit = test(_set(v))
                if len(memo) < 4096:
                    memo[v] = hit
            return hit
        return check
    if op == "regexp":
        rx = _regex(r)
        if rx is None:
            return lambda n: False
        return lambda n: (v := get_l(n)) is not None and rx.search(v) is not None
    return lambda n: (v := get_l(n)) is not None and check_operator(op, v, True, r, True)
