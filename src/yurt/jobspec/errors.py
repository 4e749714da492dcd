"""Problems found in a job file: where they are (file, line, column, path in the job) and why."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

Path = tuple  # JSON path in the job: ("TaskGroups", 0, "Services", 1, "PortLabel")


@dataclass(frozen=True, order=True)
class Position:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Problem:
    """One thing wrong with a job: `FILE:LINE:COL: <where in the job>: <what and what to do>`."""

    pos: Position
    where: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        return f"{self.pos}: {self.where}: {self.message}" if self.where else f"{self.pos}: {self.message}"


@dataclass
class JobspecError(Exception):
    """A job file that cannot be turned into a job; carries every problem found, sorted."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))
        self.problems.sort(key=lambda p: (p.pos, p.where, p.message))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    @classmethod
    def one(cls, pos: Position, message: str, where: str = "") -> JobspecError:
        return cls([Problem(pos, where, message)])


def errors_only(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def warnings_only(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "warning"]
