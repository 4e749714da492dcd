"""Rules for constraint, affinity and spread blocks (Nomad's Constraint/Affinity/Spread.Validate)."""

from __future__ import annotations

import re

from yurt.structs import Affinity, Constraint, Job, Spread, Task, TaskGroup

from .errors import Path
from .validate_common import Report

COMPARISONS = ("=", "==", "is", "!=", "not", "<", "<=", ">", ">=")
SET_OPERATORS = ("set_contains", "set_contains_all", "set_contains_any")
CONSTRAINT_OPERATORS = COMPARISONS + SET_OPERATORS + (
    "distinct_hosts", "distinct_property", "regexp", "version", "semver", "is_set", "is_not_set")
AFFINITY_OPERATORS = COMPARISONS + SET_OPERATORS + ("regexp", "version", "semver")

_VERSION = (r"v?[0-9]+(?:\.[0-9]+)*(?:-?[0-9A-Za-z\-~]+(?:\.[0-9A-Za-z\-~]+)*)?"
            r"(?:\+[0-9A-Za-z\-~]+(?:\.[0-9A-Za-z\-~]+)*)?")
_VERSION_PART = re.compile(r"^\s*(=|!=|>=|<=|>|<|~>)?\s*(" + _VERSION + r")\s*$")
_SEMVER_PART = re.compile(r"^\s*(=|!=|>=|<=|>|<)?\s*(" + _VERSION + r")\s*$")


def version_error(text: str, semver: bool) -> str | None:
    """Why a version (or semver) constraint like ">= 1.2, < 2" does not parse; None if it does."""
    pattern = _SEMVER_PART if semver else _VERSION_PART
    ops = "=, !=, >, >=, <, <=" + ("" if semver else ", ~>")
    for part in text.split(","):
        if not pattern.match(part):
            return (f'"{part.strip()}" is not a version constraint: write an operator ({ops}) '
                    'and a version, like ">= 1.2.0, < 2.0.0"')
    return None


def regexp_error(text: str) -> str | None:
    try:
        re.compile(text)
    except re.error as e:
        return f'regular expression "{text}" does not compile ({e}): fix the pattern'
    return None


def _check_value(r: Report, path: Path, operand: str, value: str, what: str) -> None:
    """Rules on the value (RTarget) that depend on the operator."""
    vpath = path + ("RTarget",)
    if operand in COMPARISONS and not value:
        r.error(vpath, f'operator "{operand}" compares with a value but the {what} has none: set value')
    elif operand in SET_OPERATORS and not value:
        r.error(vpath, f'operator "{operand}" needs a value: set value to a comma-separated list')
    elif operand in ("is_set", "is_not_set") and value:
        r.error(vpath, f'operator "{operand}" takes no value: remove value = "{value}"')
    elif operand == "regexp":
        err = regexp_error(value)
        if err:
            r.error(vpath, err)
    elif operand in ("version", "semver"):
        err = version_error(value, semver=operand == "semver")
        if err:
            r.error(vpath, err)
    elif operand == "distinct_property" and value:
        if not value.isdigit() or int(value) < 1:
            r.error(vpath, f'distinct_property allows a count of 1 or more, not "{value}": '
                           'set value to a positive whole number or remove it')


def validate_constraint(r: Report, c: Constraint, path: Path, task_level: bool = False) -> None:
    op = c.operand or "="
    if op not in CONSTRAINT_OPERATORS:
        r.error(path + ("Operand",), f'constraint operator "{op}" is not known: use one of '
                                     + ", ".join(CONSTRAINT_OPERATORS))
        return
    if task_level and op in ("distinct_hosts", "distinct_property"):
        r.error(path + ("Operand",), f'{op} cannot be used in a task constraint: '
                                     'move this constraint to the group or the job')
    if op != "distinct_hosts" and not c.l_target:
        r.error(path + ("LTarget",), 'constraint has no attribute: set attribute, '
                                     'like attribute = "${attr.kernel.name}"')
    _check_value(r, path, op, c.r_target, "constraint")


def validate_affinity(r: Report, a: Affinity, path: Path) -> None:
    op = a.operand or "="
    if op not in AFFINITY_OPERATORS:
        r.error(path + ("Operand",), f'affinity operator "{op}" is not known: use one of '
                                     + ", ".join(AFFINITY_OPERATORS))
    else:
        _check_value(r, path, op, a.r_target, "affinity")
    if not a.l_target:
        r.error(path + ("LTarget",), 'affinity has no attribute: set attribute, '
                                     'like attribute = "${node.datacenter}"')
    if a.weight is not None:
        if a.weight == 0:
            r.error(path + ("Weight",), 'affinity weight cannot be 0: use a weight from 1 to 100 '
                                        '(or -100 to -1 to avoid matching nodes)')
        elif not -100 <= a.weight <= 100:
            r.error(path + ("Weight",), f'affinity weight {a.weight} is out of range: '
                                        'use a number from -100 to 100, not 0')


def validate_spread(r: Report, s: Spread, path: Path) -> None:
    if not s.attribute:
        r.error(path + ("Attribute",), 'spread has no attribute: set attribute, '
                                       'like attribute = "${node.datacenter}"')
    if s.weight is not None and not 1 <= s.weight <= 100:
        r.error(path + ("Weight",), f'spread weight {s.weight} is out of range: use a number from 1 to 100')
    seen: set[str] = set()
    total = 0
    for i, t in enumerate(s.spread_target or []):
        tpath = path + ("SpreadTarget", i)
        if t.value in seen:
            r.error(tpath + ("Value",), f'spread target "{t.value}" is defined twice: '
                                        'merge the two target blocks')
        seen.add(t.value)
        if not 0 <= t.percent <= 100:
            r.error(tpath + ("Percent",), f'spread target "{t.value}" has percent {t.percent}: '
                                          'use a number from 0 to 100')
        total += max(t.percent, 0)
    if total > 100:
        r.error(path + ("SpreadTarget",), f'spread target percentages add up to {total}%: '
                                          'lower them so the sum is at most 100')


def validate_placement(r: Report, base: Path, owner: Job | TaskGroup | Task, job_type: str | None,
                       task_level: bool = False) -> None:
    """constraint, affinity and spread blocks of a job, group or task (`owner`)."""
    for i, c in enumerate(owner.constraints or []):
        validate_constraint(r, c, base + ("Constraints", i), task_level)
    for i, a in enumerate(owner.affinities or []):
        if job_type == "system":
            r.error(base + ("Affinities", i), 'system jobs run on every eligible node and cannot '
                                              'have affinities: use a constraint instead')
        else:
            validate_affinity(r, a, base + ("Affinities", i))
    for i, s in enumerate(getattr(owner, "spreads", None) or []):
        if job_type == "system":
            r.error(base + ("Spreads", i), 'system jobs run on every eligible node and cannot '
                                           'have spreads: remove the spread block')
        else:
            validate_spread(r, s, base + ("Spreads", i))
