"""`yurt doctor` and the preflight checks behind it."""

from __future__ import annotations

import json

from yurt.client import preflight

from .conftest import run_yurt
from .test_network_util import WHY_NOT

EXPECTED = ["cni plugin bridge", "cni plugin firewall", "cni plugin host-local", "cni plugin loopback",
            "cni plugin portmap", "iptables", "ip command", "running as root", "netns directory",
            "net.ipv4.ip_forward", "bridge netfilter", "cgroups", "firewall managers"]


def test_doctor_json_lists_every_check_and_exits_by_readiness():
    proc = run_yurt("doctor", "-json")
    data = json.loads(proc.stdout)
    assert [c["Name"] for c in data["Checks"]] == EXPECTED
    for c in data["Checks"]:
        assert set(c) == {"Name", "Status", "OK", "Detail", "Fix", "Required", "Attribute"}
        assert c["Status"] in ("ok", "warn", "FAIL")
        assert c["OK"] or c["Fix"]
    ready = all(c["OK"] for c in data["Checks"] if c["Required"])
    assert data["Ready"] == ready
    assert proc.returncode == (0 if ready else 1)
    if not WHY_NOT:  # this machine has the packages installed and runs as root
        assert proc.returncode == 0 and data["Attributes"]["network.bridge"] == "1"


def test_doctor_table_and_fixes():
    proc = run_yurt("doctor")
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["Check", "Status", "Detail"]
    assert any(line.startswith("cni plugin portmap") for line in lines)
    if proc.returncode == 0:
        assert "Bridge networking is ready on this machine." in proc.stdout


def test_missing_plugins_fail_with_the_install_command(tmp_path):
    checks = preflight.run_checks(cni_paths=(str(tmp_path),))
    plugins = [c for c in checks if c.name.startswith("cni plugin")]
    assert len(plugins) == 5 and not any(c.ok for c in plugins)
    assert plugins[0].fix == "Install containernetworking-plugins (apt-get install containernetworking-plugins)"
    assert not preflight.bridge_ready(checks)
    attrs = preflight.preflight_attributes(checks)
    assert attrs["yurt.preflight.cni.portmap"] == "missing" and "network.bridge" not in attrs


def test_preflight_attributes_on_this_machine():
    attrs = preflight.preflight_attributes()
    assert attrs["yurt.preflight.iptables"] in ("ok", "missing")
    assert all(k.startswith("yurt.preflight.") or k == "network.bridge" for k in attrs)
    if not WHY_NOT:
        assert attrs["network.bridge"] == "1" and attrs["yurt.preflight.iptables"] == "ok"
