"""Constraints, affinities and spreads."""

from __future__ import annotations

from .base import Struct, field


class Constraint(Struct):
    l_target: str = field("", json="LTarget", hcl="attribute")
    r_target: str = field("", json="RTarget", hcl="value")
    operand: str = field("", hcl="operator")


class Affinity(Struct):
    l_target: str = field("", json="LTarget", hcl="attribute")
    r_target: str = field("", json="RTarget", hcl="value")
    operand: str = field("", hcl="operator")
    weight: int | None = None


class SpreadTarget(Struct):
    value: str = field("", hcl="label")
    percent: int = 0


class Spread(Struct):
    attribute: str = ""
    weight: int | None = None
    spread_target: list[SpreadTarget] | None = field(None, hcl="target")
