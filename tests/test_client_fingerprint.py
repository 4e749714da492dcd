"""Node fingerprint: attributes, resources, a persisted node ID, CNI plugins, drivers."""

from __future__ import annotations

import os

from yurt.client import RawExecDriver, fingerprint_node


def test_fingerprint_attributes_and_resources(tmp_path):
    node = fingerprint_node(tmp_path, drivers={"raw_exec": RawExecDriver()}, datacenter="dc9",
                            address="10.1.2.3", cni_paths=[str(tmp_path / "none")])
    a = node.attributes
    cores = int(a["cpu.numcores"])
    assert cores == os.cpu_count()
    assert int(a["cpu.totalcompute"]) == cores * int(a["cpu.frequency"]) > 0
    assert a["cpu.arch"] and a["kernel.name"] == "linux" and a["kernel.version"]
    assert a["os.name"] == "debian" and a["os.version"]
    assert int(a["memory.totalbytes"]) > 0
    assert a["unique.network.ip-address"] == "10.1.2.3"
    assert a["unique.hostname"]
    assert a["driver.raw_exec"] == "1"
    assert not any(k.startswith("plugins.cni.") for k in a)
    assert node.datacenter == "dc9"
    assert node.node_resources.cpu.cpu_shares == int(a["cpu.totalcompute"])
    assert node.node_resources.cpu.total_cpu_cores == cores
    assert node.node_resources.memory.memory_mb == int(a["memory.totalbytes"]) // (1024 * 1024)
    assert node.node_resources.disk.disk_mb > 0
    assert node.drivers["raw_exec"].detected and node.drivers["raw_exec"].healthy


def test_node_id_is_persisted(tmp_path):
    first = fingerprint_node(tmp_path)
    second = fingerprint_node(tmp_path)
    assert first.id == second.id and first.secret_id == second.secret_id
    assert first.id != first.secret_id
    assert (tmp_path / "client" / "node-id").read_text().strip() == first.id
    assert fingerprint_node(tmp_path / "other").id != first.id


def test_disabled_raw_exec_is_not_an_attribute(tmp_path):
    node = fingerprint_node(tmp_path, drivers={"raw_exec": RawExecDriver(enabled=False)})
    assert "driver.raw_exec" not in node.attributes
    assert not node.drivers["raw_exec"].detected


def test_cni_plugins_with_their_versions(tmp_path):
    bin_dir = tmp_path / "cni"
    bin_dir.mkdir()
    plugin = bin_dir / "bridge"
    plugin.write_text("#!/bin/sh\necho 'CNI bridge plugin v1.1.1' >&2\n"
                      "echo 'CNI protocol versions supported: 0.1.0, 1.0.0' >&2\n")
    plugin.chmod(0o755)
    silent = bin_dir / "mystery"
    silent.write_text("#!/bin/sh\nexit 1\n")
    silent.chmod(0o755)
    (bin_dir / "README").write_text("not a plugin")
    node = fingerprint_node(tmp_path, cni_paths=[str(bin_dir), str(tmp_path / "missing")])
    a = node.attributes
    assert a["plugins.cni.version.bridge"] == "1.1.1"
    assert a["plugins.cni.version.mystery"] == "unknown"
    assert "plugins.cni.version.README" not in a
