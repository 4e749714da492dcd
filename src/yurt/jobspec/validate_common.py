"""What the validation modules share: the report they write to and small helpers."""

from __future__ import annotations

import re
from collections.abc import Iterable

from yurt.structs import Port, TaskGroup, format_duration

from .errors import Path, Problem
from .locate import Locator

SECOND = 1_000_000_000
MAX_PORT = 65535

# A field-relative finding of a policy check: (JSON field name or "", message).
Issue = tuple[str, str]

_INTERPOLATION = re.compile(r"\$\{[^}]*\}")


class Report:
    """Collects every problem of a job; rules call error() / warn() with a JSON path.

    The same message at the same path is reported once, so a value merged into several places
    (a job's update block into each group) is reported once, where it was written.
    """

    def __init__(self, loc: Locator) -> None:
        self.loc = loc
        self.problems: list[Problem] = []
        self._seen: set[tuple[Path, str]] = set()

    def error(self, path: Path, message: str) -> None:
        self._add(path, message, "error")

    def warn(self, path: Path, message: str) -> None:
        self._add(path, message, "warning")

    def _add(self, path: Path, message: str, severity: str) -> None:
        key = (tuple(path), message)
        if key not in self._seen:
            self._seen.add(key)
            self.problems.append(self.loc.problem(tuple(path), message, severity))

    def written(self, path: Path) -> bool:
        """Whether the job file holds this exact attribute or block (its position was recorded)."""
        return tuple(path) in self.loc.positions

    def origin(self, *paths: Path) -> Path:
        """Of the places a merged value may come from (most specific first), the one written."""
        return next((p for p in paths if self.written(p)), paths[0])

    def issues(self, base: Path, found: Iterable[Issue], already: Iterable[Issue] = (),
               parent: Path | None = None) -> None:
        """Report policy issues under `base`, skipping those already reported for the parent
        policy it was merged from; an issue about a field only the parent wrote goes there."""
        seen = set(already)
        for name, message in found:
            if (name, message) in seen:
                continue
            sub = (name,) if name else ()
            path = tuple(base) + sub
            if parent is not None and not self.written(path) and not self.written(base):
                path = self.origin(path, tuple(parent) + sub, tuple(parent))
            self.error(path, message)


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


def is_known_mode(mode: str) -> bool:
    return mode in ("host", "bridge", "none") or (mode.startswith("cni/") and len(mode) > 4)

