"""How the CLI shows results: problems as `FILE:LINE:COL: ...` lines, warnings, exit codes."""

from __future__ import annotations

import sys
from typing import NoReturn
from collections.abc import Iterable

from rich.console import Console

from yurt.jobspec import Problem

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PLACEMENT = 2

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def show_problems(problems: Iterable[Problem], file: str) -> None:
    problems = list(problems)
    errors = [p for p in problems if p.severity == "error"]
    for p in errors:
        err.print(str(p), markup=False)
    if errors:
        n = len(errors)
        err.print(f"[bold red]{n} error{'s' if n != 1 else ''}[/] in {file}")
    show_warnings([p for p in problems if p.severity == "warning"])


def show_warnings(warnings: Iterable[Problem]) -> None:
    warnings = list(warnings)
    if not warnings:
        return
    err.print("[bold yellow]Job Warnings:[/]")
    for w in warnings:
        err.print(f"* {w}", markup=False)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    if err.is_terminal:
        err.print(f"[red]Error:[/] {message}", markup=True)
    else:
        print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(code)
