"""What this node is: cpu, memory, disk, kernel, OS, network address, CNI plugins, drivers.

`fingerprint_node` returns the `structs.Node` a client registers with. The node's ID is kept
in ``<data_dir>/client/node-id`` (and its secret in ``secret-id``) so it survives restarts.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from collections.abc import Mapping

import yurt
from yurt.structs import ClientHostVolumeConfig, DriverInfo, Node
from yurt.structs.node import (NodeCpuResources, NodeDiskResources, NodeMemoryResources, NodeNetworkAddress,
                               NodeNetworkResource, NodeResources)

from .drivers.base import Driver

CNI_PATHS = ("/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni")
_VERSION = re.compile(r"\bv?(\d+\.\d+\.\d+(?:[-+][\w.]+)?)")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_attributes() -> tuple[dict[str, str], int, int]:
    """Attributes, total compute (MHz), number of cores."""
    info = _read("/proc/cpuinfo")
    cores = os.cpu_count() or 1
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)]
    models = re.findall(r"^model name\s*:\s*(.+)$", info, re.M)
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    freq = int(int(max_khz) / 1000) if max_khz.isdigit() else int(max(mhz) if mhz else 1000)
    total = freq * cores
    attrs = {
        "cpu.numcores": str(cores),
        "cpu.frequency": str(freq),
        "cpu.totalcompute": str(total),
        "cpu.arch": platform.machine().replace("x86_64", "amd64").replace("aarch64", "arm64"),
    }
    if models:
        attrs["cpu.modelname"] = models[0].strip()
    return attrs, total, cores


def memory_bytes() -> int:
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read("/proc/meminfo"), re.M)
    return int(m.group(1)) * 1024 if m else 0


def os_attributes() -> dict[str, str]:
    release = dict(re.findall(r'^(\w+)=\"?([^"\n]*)\"?$', _read("/etc/os-release"), re.M))
    attrs = {"kernel.name": platform.system().lower(), "kernel.version": platform.release(),
             "kernel.arch": platform.machine()}
    if release.get("ID"):
        attrs["os.name"] = release["ID"]
    if release.get("VERSION_ID"):
        attrs["os.version"] = release["VERSION_ID"]
    return attrs


def _plugin_version(path: Path) -> str:
    """A CNI plugin's own version, or "unknown".

    Run without ``CNI_COMMAND``, the reference plugins print "CNI <name> plugin v1.2.3" (and
    the protocol versions they speak, which is not the plugin's version).
    """
    try:
        out = subprocess.run([str(path)], stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=5, env={})
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in (out.stdout + out.stderr).decode(errors="replace").splitlines():
        if "protocol" in line.lower():
            continue
        m = _VERSION.search(line)
        if m:
            return m.group(1)
    return "unknown"


def cni_attributes(paths: tuple[str, ...] | list[str] = CNI_PATHS) -> dict[str, str]:
    """``plugins.cni.version.<name>`` for every executable plugin found (first path wins)."""
    attrs: dict[str, str] = {}
    for d in paths:
        directory = Path(d)
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            key = f"plugins.cni.version.{entry.name}"
            if key in attrs or not entry.is_file() or not os.access(entry, os.X_OK):
                continue
            attrs[key] = _plugin_version(entry)
    return attrs


def _persisted_id(path: Path) -> str:
    try:
        value = path.read_text().strip()
        uuid.UUID(value)
        return value
    except (OSError, ValueError):
        value = str(uuid.uuid4())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        return value


def fingerprint_node(data_dir: str | os.PathLike, *, drivers: Mapping[str, Driver] | None = None,
                     name: str | None = None, datacenter: str = "dc1", region: str = "global",
                     node_class: str = "", node_pool: str = "default",
                     address: str = "127.0.0.1", http_addr: str = "",
                     meta: Mapping[str, str] | None = None,
                     network_interface: str = "",
                     host_networks: Mapping[str, tuple[str, str]] | None = None,
                     host_volumes: Mapping[str, tuple[str, bool]] | None = None,
                     cni_paths: tuple[str, ...] | list[str] = CNI_PATHS) -> Node:
    """Fingerprint this machine into a Node (status "initializing")."""
    client_dir = Path(data_dir) / "client"
    hostname = socket.gethostname()
    attrs, compute, cores = cpu_attributes()
    mem = memory_bytes()
    attrs["memory.totalbytes"] = str(mem)
    attrs.update(os_attributes())
    attrs["unique.hostname"] = hostname
    attrs["unique.network.ip-address"] = address
    if network_interface:
        attrs["unique.network.interface"] = network_interface
    attrs["nomad.version"] = yurt.__version__
    attrs["nomad.region"] = region
    client_dir.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(client_dir)
    attrs["unique.storage.volume"] = str(client_dir)
    attrs["unique.storage.bytestotal"] = str(disk.total)
    attrs["unique.storage.bytesfree"] = str(disk.free)
    attrs.update(cni_attributes(cni_paths))
    from .preflight import preflight_attributes
    attrs.update(preflight_attributes())  # what bridge networking needs, as the scheduler sees it

    driver_infos: dict[str, DriverInfo] = {}
    for dname, driver in (drivers or {}).items():
        fp = driver.fingerprint()
        driver_infos[dname] = DriverInfo(attributes=fp.attributes or None, detected=fp.detected,
                                         healthy=fp.healthy, health_description=fp.description)
        if fp.detected:
            attrs.update(fp.attributes)

    return Node(
        id=_persisted_id(client_dir / "node-id"), secret_id=_persisted_id(client_dir / "secret-id"),
        name=name or hostname, datacenter=datacenter, node_pool=node_pool, node_class=node_class,
        http_addr=http_addr, attributes=attrs, meta=dict(meta or {}), drivers=driver_infos,
        host_volumes={n: ClientHostVolumeConfig(name=n, path=p, read_only=ro)
                      for n, (p, ro) in sorted((host_volumes or {}).items())},
        node_resources=NodeResources(
            cpu=NodeCpuResources(cpu_shares=compute, total_cpu_cores=cores),
            memory=NodeMemoryResources(memory_mb=mem // (1024 * 1024)),
            disk=NodeDiskResources(disk_mb=disk.free // (1024 * 1024)),
            node_networks=[NodeNetworkResource(device=network_interface, addresses=[
                NodeNetworkAddress(alias="default", address=address),
                *(NodeNetworkAddress(alias=name, address=ip, reserved_ports=reserved)
                  for name, (ip, reserved) in sorted((host_networks or {}).items()))])]))
