"""The "bridge" network: Nomad's generated CNI conflist, adapted, and its iptables admin chain."""

from __future__ import annotations

import ipaddress
import os
import threading
from typing import Any

from . import iptables

BRIDGE_NAME = "yurt"
NETWORK_NAME = "yurt"
SUBNET = "172.26.64.0/20"
ADMIN_CHAIN = "YURT-ADMIN"
IPAM_DATA_DIR = "/var/run/cni"          # the host-local leases of the machine's own network namespace
NETNS_IPAM_DIR = "/var/run/yurt/ipam"   # <this>/<namespace name>: those of an agent run in another one
PLUGINS = ("loopback", "bridge", "firewall", "portmap")

_admin_lock = threading.Lock()


def ipam_data_dir() -> str:
    """Where host-local keeps the bridge's leases: they belong to the bridge, so to the network
    namespace the agent runs in (every agent there shares the one "yurt" bridge).

    The machine's own namespace uses ``/var/run/cni``, as other CNI runtimes do. An agent run in
    a named one (``/var/run/netns/<name>``: a lab host) gets ``/var/run/yurt/ipam/<name>``, so
    hosts sharing a machine never share leases.
    """
    global _ipam_dir
    if _ipam_dir is None:
        _ipam_dir = _ipam_dir_for_this_namespace()
    return _ipam_dir


_ipam_dir: str | None = None


def _ipam_dir_for_this_namespace() -> str:
    """A namespace named under /var/run/netns (a lab host) gets its own directory; the machine's
    own namespace, or an unnamed one (a container, with its own /var/run), uses /var/run/cni."""
    try:
        mine = os.stat("/proc/self/ns/net")
        for entry in sorted(os.scandir("/var/run/netns"), key=lambda e: e.name):
            try:
                st = os.stat(entry.path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return f"{NETNS_IPAM_DIR}/{entry.name}"
    except OSError:
        pass
    return IPAM_DATA_DIR


def conflist(*, bridge: str = BRIDGE_NAME, subnet: str = SUBNET, name: str = NETWORK_NAME,
             admin_chain: str = ADMIN_CHAIN, hairpin: bool = True, ipam_dir: str | None = None) -> dict[str, Any]:
    """The network list for bridge mode.

    hairpinMode is on (Nomad's default is off) so a group reaches its own host ports.
    """
    return {
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {"type": "loopback"},
            {"type": "bridge", "bridge": bridge, "ipMasq": True, "isGateway": True, "forceAddress": True,
             "hairpinMode": hairpin,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir or ipam_data_dir()}},
            {"type": "firewall", "backend": "iptables", "iptablesAdminChainName": admin_chain},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def gateway(subnet: str = SUBNET) -> str:
    """The bridge's own address: host-local gives the gateway the subnet's first address."""
    return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))


def ensure_admin_chain(*, bridge: str = BRIDGE_NAME, subnet: str = SUBNET, chain: str = ADMIN_CHAIN) -> None:
    """The filter chain the firewall plugin jumps to, accepting traffic into the bridge's subnet.

    Idempotent: the chain is created once and the rule appended only when it is not there, so
    rules an administrator added to the chain keep their place.
    """
    with _admin_lock:
        iptables.ensure_chain("filter", chain)
        iptables.ensure_rule("filter", chain, ["-o", bridge, "-d", subnet, "-j", "ACCEPT"])
