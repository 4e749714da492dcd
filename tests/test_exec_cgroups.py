"""cgroup file handling against fake hierarchies (no kernel needed), and config parsing."""

from __future__ import annotations

import pytest

from yurt.client import cgroups
from yurt.client.cgroups import Cgroup, CgroupError
from yurt.client.drivers.base import DriverError
from yurt.client.drivers.exec import CAPABILITIES, DEFAULT_CAPS, parse_config

MB = 1024 * 1024


def fake_v2(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    return tmp_path


def fake_v1(tmp_path, controllers=("cpu", "cpuacct", "memory", "pids")):
    for c in controllers:
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    return tmp_path


def test_version_and_missing(tmp_path):
    assert cgroups.version(tmp_path) == 0
    assert "no cgroup hierarchy" in cgroups.missing(tmp_path)
    fake_v1(tmp_path, ("cpu",))
    assert cgroups.version(tmp_path) == 1
    assert cgroups.missing(tmp_path) == "cgroup v1 controllers not mounted: memory"


def test_v2_limits(tmp_path):
    root = fake_v2(tmp_path)
    cg = Cgroup.create("a1.web", cpu_shares=500, memory_mb=64, memory_max_mb=256, root=root)
    d = root / "yurt.slice" / "a1.web"
    assert cg.paths == {"unified": d}
    assert (d / "cpu.weight").read_text() == str(cgroups.cpu_weight(500))
    assert (d / "memory.max").read_text() == str(256 * MB)
    assert (d / "memory.low").read_text() == str(64 * MB)
    assert (root / "yurt.slice" / "cgroup.subtree_control").exists()
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed()
    assert Cgroup.from_dict(cg.to_dict()).paths == cg.paths


def test_v1_limits_and_oom_counter(tmp_path):
    root = fake_v1(tmp_path)
    cg = Cgroup.create("a1.web", cpu_shares=100, memory_mb=32, root=root)
    assert (root / "cpu/yurt/a1.web/cpu.shares").read_text() == "100"
    mem = root / "memory/yurt/a1.web"
    assert (mem / "memory.limit_in_bytes").read_text() == str(32 * MB)
    assert not (mem / "memory.soft_limit_in_bytes").exists()
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert not cg.oom_killed()
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.oom_killed()


def test_cpu_weight_conversion():
    assert cgroups.cpu_weight(2) == 1
    assert cgroups.cpu_weight(1024) == 39
    assert cgroups.cpu_weight(262144) == 10000


def test_unwritable_limit_is_a_clear_error(tmp_path):
    root = fake_v1(tmp_path)
    (root / "memory/yurt/a1.web/memory.limit_in_bytes").mkdir(parents=True)  # not writable
    with pytest.raises(CgroupError, match=r"cannot write .* to .*memory\.limit_in_bytes"):
        Cgroup.create("a1.web", memory_mb=32, root=root)


def test_parse_config_caps_and_modes():
    opts = parse_config({"command": "x", "args": [1, "b"], "cap_drop": ["CAP_CHOWN"]}, DEFAULT_CAPS)
    assert opts["args"] == ["1", "b"] and opts["pid_mode"] == "private"
    assert CAPABILITIES.index("chown") not in opts["caps"]
    assert CAPABILITIES.index("kill") in opts["caps"]
    with pytest.raises(DriverError, match="not allowed on this client: sys_admin"):
        parse_config({"command": "x", "cap_add": ["sys_admin"]}, DEFAULT_CAPS)
    assert parse_config({"command": "x", "cap_drop": ["all"]}, DEFAULT_CAPS)["caps"] == []
    with pytest.raises(DriverError, match='missing required "command"'):
        parse_config({}, DEFAULT_CAPS)
