"""Shared test helpers: the seed job, running the real `yurt` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The seed lives in ../shared/seed; CI lays shared/ beside the clone. A copy is kept in fixtures.
SHARED_SEED = ROOT.parent / "shared" / "seed" / "connect.nomad"
SEED = SHARED_SEED if SHARED_SEED.exists() else FIXTURES / "connect.nomad"
YURT = [sys.executable, "-m", "yurt.cli.main"]


def run_yurt(*args: str, cwd: str | os.PathLike | None = None, input: bytes | None = None,
             env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess; returns text stdout/stderr and the exit code."""
    proc = subprocess.run([*YURT, *args], cwd=cwd, input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


@pytest.fixture
def seed_text() -> str:
    return SEED.read_text()
