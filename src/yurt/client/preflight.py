"""Is this machine ready to run allocations, bridge networking included? (`yurt doctor`)

Each check says what it found and, when it fails, the command that fixes it. ``required``
checks are what bridge networking cannot do without; the others are warnings.
`preflight_attributes` turns the results into node attributes the scheduler can constrain on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .network import bridge
from .network.cni import DEFAULT_CNI_PATHS, INSTALL_HINT
from .network.iptables import SBIN_PATH
from .network.netns import NETNS_DIR

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True   # needed for bridge networking (a failed optional one is a warning)
    key: str = ""           # node attribute suffix: yurt.preflight.<key>

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("FAIL" if self.required else "warn")

    def to_json(self) -> dict:
        return {"Name": self.name, "Status": self.status, "OK": self.ok, "Detail": self.detail, "Fix": self.fix,
                "Required": self.required, "Attribute": "yurt.preflight." + (self.key or KEYS.get(self.name, ""))}


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def check_cni_plugins(paths: tuple[str, ...] = DEFAULT_CNI_PATHS) -> list[Check]:
    out = []
    for plugin in ("bridge", "firewall", "host-local", "loopback", "portmap"):
        found = next((str(Path(d) / plugin) for d in paths
                      if (Path(d) / plugin).is_file() and os.access(Path(d) / plugin, os.X_OK)), None)
        out.append(Check(f"cni plugin {plugin}", bool(found), found or f"not found in {':'.join(paths)}",
                         "" if found else INSTALL_HINT[0].upper() + INSTALL_HINT[1:], key=f"cni.{plugin}"))
    return out


def check_iptables() -> Check:
    exe = _which("iptables")
    if exe is None:
        return Check("iptables", False, "iptables is not installed", "apt-get install iptables")
    try:
        proc = subprocess.run([exe, "-w", "-L", "-n"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return Check("iptables", False, f"{exe} -L -n: {e}", "apt-get install iptables")
    if proc.returncode != 0:
        return Check("iptables", False, f"{exe} -L -n: {proc.stderr.strip()[:200]}",
                     "run as root; check that the kernel has netfilter (nf_tables or ip_tables modules)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return Check("iptables", True, version or exe)


def check_ip() -> Check:
    exe = _which("ip")
    return Check("ip command", bool(exe), exe or "not found", "" if exe else "apt-get install iproute2")


def check_ip_forward() -> Check:
    value = _read("/proc/sys/net/ipv4/ip_forward")
    ok = value == "1"
    return Check("net.ipv4.ip_forward", ok, f"= {value or '?'}" + ("" if ok else
                 " (the bridge plugin turns it on when it sets up the first allocation)"),
                 "" if ok else "sysctl -w net.ipv4.ip_forward=1", required=False)


def check_bridge_netfilter() -> Check:
    value = _read("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not value:
        return Check("bridge netfilter", False,
                     "br_netfilter is not loaded: traffic between allocations on the bridge skips iptables",
                     "modprobe br_netfilter", required=False)
    ok = value == "1"
    return Check("bridge netfilter", ok, f"bridge-nf-call-iptables = {value}",
                 "" if ok else "sysctl -w net.bridge.bridge-nf-call-iptables=1", required=False)


def check_cgroups() -> Check:
    controllers = _read(str(CGROUP_ROOT / "cgroup.controllers"))
    if controllers:
        missing = [c for c in ("cpu", "memory") if c not in controllers.split()]
        return Check("cgroups", not missing, f"v2 unified: {controllers}" + (
            f" (missing {', '.join(missing)})" if missing else ""),
            "enable the cpu and memory controllers (cgroup_enable=memory on the kernel command line)"
            if missing else "", required=False)
    mounted = [c for c in ("cpu", "memory") if (CGROUP_ROOT / c).is_dir() and any((CGROUP_ROOT / c).iterdir())]
    missing = [c for c in ("cpu", "memory") if c not in mounted]
    return Check("cgroups", not missing, f"v1: {', '.join(mounted) or 'none'} mounted under {CGROUP_ROOT}"
                 + (f" (missing {', '.join(missing)})" if missing else ""),
                 "mount the cgroup controllers (e.g. via systemd or cgroupfs-mount)" if missing else "",
                 required=False)


def check_root() -> Check:
    ok = os.geteuid() == 0
    return Check("running as root", ok, f"uid {os.geteuid()}",
                 "" if ok else "run the client agent as root (namespaces, bridges and iptables need it)")


def check_netns_dir() -> Check:
    try:
        NETNS_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=NETNS_DIR, prefix=".yurt-doctor-"):
            pass
        return Check("netns directory", True, f"{NETNS_DIR} is writable")
    except OSError as e:
        return Check("netns directory", False, f"{NETNS_DIR}: {e.strerror or e}",
                     f"run as root, and make sure {NETNS_DIR} is on a writable filesystem")


def check_firewall_managers() -> Check:
    """firewalld or a native nftables ruleset can drop the bridge's traffic (Nomad #12199)."""
    notes = []
    if _which("firewall-cmd") and subprocess.run([_which("firewall-cmd"), "--state"], capture_output=True,
                                                 text=True).returncode == 0:
        notes.append("firewalld is running: add the bridge to a trusted zone "
                     f"(firewall-cmd --zone=trusted --add-interface={bridge.BRIDGE_NAME} --permanent)")
    if notes:
        return Check("firewall managers", False, "; ".join(notes), notes[0].split(": ", 1)[1], required=False)
    return Check("firewall managers", True, "no firewalld running", required=False)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


KEYS = {"iptables": "iptables", "ip command": "ip", "running as root": "root", "netns directory": "netns_dir",
        "net.ipv4.ip_forward": "ip_forward", "bridge netfilter": "bridge_netfilter", "cgroups": "cgroups",
        "firewall managers": "firewall_managers"}


def run_checks(cni_paths: tuple[str, ...] = DEFAULT_CNI_PATHS) -> list[Check]:
    return [*check_cni_plugins(cni_paths), check_iptables(), check_ip(), check_root(), check_netns_dir(),
            check_ip_forward(), check_bridge_netfilter(), check_cgroups(), check_firewall_managers()]


def bridge_ready(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


def preflight_attributes(checks: list[Check] | None = None) -> dict[str, str]:
    """Node attributes from the checks (merge into the fingerprint):
    ``yurt.preflight.<check> = "ok" | "missing"`` and ``network.bridge = "1"`` when bridge
    (and "none"/"cni") networking can work here."""
    checks = run_checks() if checks is None else checks
    attrs = {}
    for c in checks:
        attrs["yurt.preflight." + (c.key or KEYS.get(c.name, c.name.replace(" ", "_")))] = \
            "ok" if c.ok else "missing"
    if bridge_ready(checks):
        attrs["network.bridge"] = "1"
    return attrs
