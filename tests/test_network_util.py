"""Helpers for the network tests (no tests here): bridge allocations, probes, leftovers."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from yurt.client.network import bridge, netns
from yurt.client.network.cni import DEFAULT_CNI_PATHS
from yurt.jobspec.defaults import canonicalize
from yurt.structs import Allocation, Job, NetworkResource, Port, Task, TaskGroup
from yurt.structs.alloc import AllocatedPortMapping
from yurt.structs.network import DNSConfig

PY = shutil.which("python3") or "/usr/bin/python3"


def _why_not() -> str:
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    if netns.ip_binary() is None:
        return "iproute2 (ip) is not installed"
    if shutil.which("iptables") is None and not Path("/usr/sbin/iptables").exists():
        return "iptables is not installed"
    missing = [p for p in bridge.PLUGINS + ("host-local",)
               if not any((Path(d) / p).exists() for d in DEFAULT_CNI_PATHS)]
    if missing:
        return f"CNI plugins missing: {missing} (apt-get install containernetworking-plugins)"
    name = f"yurt-probe-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"the kernel refuses network namespaces: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return ""


WHY_NOT = _why_not()
needs_netns = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "ok")


@pytest.fixture(autouse=False)
def network_lock():
    """Serialise the tests that compare the host's iptables or bridge before and after, across
    pytest processes running at once (they share one kernel)."""
    import fcntl
    Path("/var/run/yurt").mkdir(parents=True, exist_ok=True)
    with open("/var/run/yurt/test-network.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def other_allocs(line: str, mine: set[str]) -> bool:
    """Does an iptables-save line name an allocation other than ``mine``?"""
    import re
    ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", line))
    return bool(ids - mine)


def free_port() -> int:
    """A port nothing listens on (host side), in a range the scheduler would not pick."""
    for _ in range(200):
        port = random.randint(33000, 39999)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def server(name: str, port: int, bind: str = "0.0.0.0", **kw) -> Task:
    return Task(name=name, driver="raw_exec",
                config={"command": PY, "args": ["-m", "http.server", str(port), "--bind", bind]}, **kw)


def py(name: str, code: str, **kw) -> Task:
    return Task(name=name, driver="raw_exec", config={"command": PY, "args": ["-u", "-c", code]}, **kw)


def sh(name: str, script: str, **kw) -> Task:
    return Task(name=name, driver="raw_exec", config={"command": "/bin/sh", "args": ["-c", script]}, **kw)


def bridge_alloc(tasks: list[Task], ports: list[tuple] = (), *, mode: str = "bridge", static: bool = True,
                 dns: DNSConfig | None = None, hostname: str = "", cni_args: dict | None = None) -> Allocation:
    """ports: (label, host value, to[, host ip]) — host ip defaults to 127.0.0.1."""
    network_ports = [Port(label=p[0], value=p[1] if static else 0, to=p[2]) for p in ports]
    from yurt.structs.network import CNIConfig
    network = NetworkResource(mode=mode, dns=dns, hostname=hostname,
                              cni=CNIConfig(args=cni_args) if cni_args else None,
                              reserved_ports=network_ports if static else None,
                              dynamic_ports=None if static else network_ports)
    job = Job(id="nettest", type="service", task_groups=[TaskGroup(name="web", tasks=tasks, networks=[network])])
    canonicalize(job)
    alloc = Allocation(id=str(uuid.uuid4()), name="nettest.web[0]", job_id="nettest", job=job, task_group="web")
    alloc.allocated_resources.shared.ports = [
        AllocatedPortMapping(label=p[0], value=p[1], to=p[2], host_ip=p[3] if len(p) > 3 else "127.0.0.1")
        for p in ports]
    return alloc


def ns_http_get(ns: str, url: str, timeout: float = 3.0) -> str | None:
    """GET ``url`` from inside namespace ``ns``; the body's first bytes, or None when unreachable."""
    code = ("import sys, urllib.request\n"
            f"try:\n    print(urllib.request.urlopen({url!r}, timeout={timeout}).read(200).decode())\n"
            "except Exception as e:\n    print('ERR', e); sys.exit(1)\n")
    proc = subprocess.run(["ip", "netns", "exec", ns, PY, "-c", code], capture_output=True, text=True,
                          timeout=timeout + 10)
    return proc.stdout if proc.returncode == 0 else None


def host_http_get(url: str, timeout: float = 3.0) -> str | None:
    import urllib.request
    try:
        return urllib.request.urlopen(url, timeout=timeout).read(200).decode()
    except OSError:
        return None


def iptables_lines() -> set[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if line.startswith(("-A", ":")) and not line.startswith("#")}


def rule_lines(text_set: set[str]) -> set[str]:
    return {line.split(" [")[0] for line in text_set}


def mentions(lines: set[str], *needles: str) -> list[str]:
    return sorted(line for line in lines if any(n and n in line for n in needles))


def bridge_veths(bridge_name: str = bridge.BRIDGE_NAME) -> set[str]:
    proc = subprocess.run(["ip", "-j", "link", "show", "master", bridge_name], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return set()
    return {link["ifname"] for link in json.loads(proc.stdout)}


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def host_veth(result: dict | None) -> str:
    for iface in (result or {}).get("interfaces") or []:
        if iface.get("name", "").startswith("veth") and not iface.get("sandbox"):
            return iface["name"]
    return ""


def leases(network: str = bridge.NETWORK_NAME, data_dir: str | None = None) -> dict[str, str]:
    from yurt.client.network.reconcile import ipam_leases
    return ipam_leases(network, data_dir)
