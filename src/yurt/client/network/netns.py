"""Named network namespaces, the way ``ip netns`` makes them.

An allocation's namespace is ``/var/run/netns/<alloc id>``, so operators can
``ip netns exec <alloc id> ss -ltn``; its resolver file goes to ``/etc/netns/<alloc id>/``,
which ``ip netns exec`` bind-mounts over ``/etc/resolv.conf``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .iptables import SBIN_PATH

NETNS_DIR = Path("/var/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class NetnsError(Exception):
    pass


def ip_binary() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path=SBIN_PATH)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = ip_binary()
    if exe is None:
        raise NetnsError("the ip command is not installed: apt-get install iproute2")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def path(name: str) -> str:
    return str(NETNS_DIR / name)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create(name: str, *, loopback_up: bool = True) -> str:
    """Create the namespace (idempotent) with its loopback up; returns its path."""
    if not exists(name):
        proc = ip("netns", "add", name, check=False)
        if proc.returncode != 0 and not exists(name):
            raise NetnsError(f"cannot create network namespace {name}: {proc.stderr.strip()}")
    if loopback_up:
        ip("-n", name, "link", "set", "lo", "up")
    return path(name)


def delete(name: str) -> None:
    """Delete the namespace and its /etc/netns directory; nothing happens if they are gone."""
    if exists(name):
        proc = ip("netns", "delete", name, check=False)
        if proc.returncode != 0 and exists(name):
            try:  # a leftover file that is no longer a mount point
                os.unlink(NETNS_DIR / name)
            except OSError:
                raise NetnsError(f"cannot delete network namespace {name}: {proc.stderr.strip()}") from None
    shutil.rmtree(ETC_NETNS_DIR / name, ignore_errors=True)


def names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except OSError:
        return []


def uuid_names() -> list[str]:
    """The namespaces named like an allocation ID."""
    return [n for n in names() if UUID_RE.match(n)]


def write_resolv_conf(name: str, content: str) -> Path:
    directory = ETC_NETNS_DIR / name
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "resolv.conf"
    tmp = directory / ".resolv.conf.tmp"
    tmp.write_text(content)
    os.replace(tmp, target)
    return target


def addresses(name: str, ifname: str = "eth0") -> list[str]:
    """IPv4 addresses (without prefix) of ``ifname`` inside the namespace."""
    proc = ip("-n", name, "-4", "-o", "addr", "show", "dev", ifname, check=False)
    return re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", proc.stdout) if proc.returncode == 0 else []
