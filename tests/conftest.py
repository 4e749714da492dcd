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


# `make test` runs the files in parallel (pytest-xdist: -n 3 --dist loadgroup). A file's tests stay
# together on one worker (they share module-scoped agents and clusters), and files that hold the
# same fixed resource run on one worker, one after the other: countdash's static host port 9002,
# and the labs (each names its hosts after its process, but they share the host's routes to
# their subnets). The slowest groups are started first, so no worker is left with a long tail.
SERIAL = {
    "lab": ("test_ha_lab.py", "test_lab.py", "test_lab_etcd.py", "test_lab_secure.py", "test_lab_system.py"),
    "countdash": ("test_mesh_countdash.py", "test_docker_countdash.py", "test_countdash_apps.py",
                  "test_mesh_handover.py", "test_ui_browser.py", "test_countdash_template.py"),
}
FIRST = ("lab", "countdash", "test_mesh_memory.py", "test_etcd_cluster.py", "test_mesh_explain.py")


def _group(item: pytest.Item) -> str:
    name = item.path.name
    return next((g for g, files in SERIAL.items() if name in files), name)


def pytest_itemcollected(item: pytest.Item) -> None:
    # marked as each test is collected: xdist reads the groups in its own collection hook
    item.add_marker(pytest.mark.xdist_group(_group(item)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {g: i for i, g in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(FIRST)))   # stable: files keep their order
