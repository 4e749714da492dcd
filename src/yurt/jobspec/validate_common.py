"""What the validation modules share: the report they write to and small helpers."""

from __future__ import annotations

import re
from typing import Iterable

from yurt.structs import Port, TaskGroup, format_duration

from .errors import Path, Problem
from .locate import Locator

SECOND = 1_000_000_000
MAX_PORT = 65535

# A field-relative finding of a policy check: (JSON field name or "", message).
Issue = tuple[str, str]

_INTERPOLATION = re.compile(r"\$\{[^}]*\}")


class Report:
    """Collects every problem of a job; rules call error() / warn() with a JSON path."""

    def __init__(self, loc: Locator) -> None:
        self.loc = loc
        self.problems: list[Problem] = []

    def error(self, path: Path, message: str) -> None:
        self.problems.append(self.loc.problem(tuple(path), message))

    def warn(self, path: Path, message: str) -> None:
        self.problems.append(self.loc.problem(tuple(path), message, severity="warning"))

    def issues(self, base: Path, found: Iterable[Issue], already: Iterable[Issue] = ()) -> None:
        """Report policy issues under `base`, skipping those already reported for a parent."""
        seen = set(already)
        for name, message in found:
            if (name, message) not in seen:
                self.error(tuple(base) + ((name,) if name else ()), message)


def dur(ns: int | None) -> str:
    return format_duration(ns or 0)


def is_number(text: str) -> bool:
    return text.isdigit()


def strip_interpolation(text: str, placeholder: str = "ENV-VAR") -> str:
    """Replace every ${...} by a placeholder, as Nomad does before checking names."""
    return _INTERPOLATION.sub(placeholder, text)


def group_ports(group: TaskGroup) -> dict[str, Port]:
    """Every port label of the group's networks (the first declaration of each label)."""
    out: dict[str, Port] = {}
    for net in group.networks or []:
        for port in net.ports():
            out.setdefault(port.label, port)
    return out


def group_mode(group: TaskGroup) -> str:
    """The group's network mode ("host" when there is no network)."""
    return group.networks[0].effective_mode if group.networks else "host"


def is_group_isolated(mode: str) -> bool:
    """Bridge or CNI: the group has its own network namespace."""
    return mode == "bridge" or mode.startswith("cni/")


def names(items: Iterable[str]) -> str:
    return ", ".join(items)
